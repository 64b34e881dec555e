#include "mh_agent_parse.h"
#include "mh_json.h"

#include <string.h>

static bool s_id_ok(const char *id)
{
    return id && *id && strlen(id) <= MH_AGENT_MAX_ID;
}

json_t *mh_agent_parse_command(const char *payload, size_t len, mh_agent_cmd_t *out)
{
    json_t *root = mh_json_loadb(payload, len, 0, MH_JSON_MAX_DEPTH, NULL);
    const char *id = json_string_value(json_object_get(root, "id"));
    const char *name = json_string_value(json_object_get(root, "name"));
    if (!s_id_ok(id) || !name) {
        json_decref(root);
        return NULL;
    }
    out->id = id;
    out->name = name;
    out->params = json_object_get(root, "params");
    return root;
}

void mh_agent_job_read(json_t *j, mh_ota_job_t *out)
{
    json_t *size = json_object_get(j, "size");
    *out = (mh_ota_job_t){
        .job_id = json_string_value(json_object_get(j, "jobId")),
        .rollout = json_string_value(json_object_get(j, "rollout")),
        .action = json_string_value(json_object_get(j, "action")),
        .version = json_string_value(json_object_get(j, "version")),
        .url = json_string_value(json_object_get(j, "url")),
        .sha256 = json_string_value(json_object_get(j, "sha256")),
        .signature = json_string_value(json_object_get(j, "signature")),
        .size =
            json_is_integer(size) && json_integer_value(size) >= 0 ? json_integer_value(size) : -1,
    };
}

json_t *mh_agent_parse_job(const char *payload, size_t len, mh_ota_job_t *out)
{
    json_t *root = mh_json_loadb(payload, len, 0, MH_JSON_MAX_DEPTH, NULL);
    if (!s_id_ok(json_string_value(json_object_get(root, "jobId")))) {
        json_decref(root);
        return NULL;
    }
    mh_agent_job_read(root, out);
    return root;
}

json_t *mh_agent_parse_delta(const char *payload, size_t len, json_t **state, int64_t *version)
{
    json_t *root = mh_json_loadb(payload, len, 0, MH_JSON_MAX_DEPTH, NULL);
    json_t *s = json_object_get(root, "state");
    if (!json_is_object(s)) {
        json_decref(root);
        return NULL;
    }
    *state = s;
    *version = json_integer_value(json_object_get(root, "version"));
    return root;
}
