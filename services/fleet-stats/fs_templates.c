/* fleet-stats: fleet provisioning templates, answered by twin
 * (tw_provision_rpc.c): list, read, create or replace (PUT), delete. */
#include "fs_internal.h"

int fs_templates(fs_t *self, struct mg_connection *c, const char *method, const char *name)
{
    Mh__TwinRequest q = MH__TWIN_REQUEST__INIT;
    q.shadow = (char *)(name ? name : "");
    if (!name) {
        if (strcmp(method, "GET") != 0)
            return fs_error(self, c, 405, "method_not_allowed", "GET");
        q.method = MH__TWIN_REQUEST__METHOD__LIST_TEMPLATES;
        return fs_twin(self, c, &q, false);
    }
    if (strcmp(method, "GET") == 0 || strcmp(method, "DELETE") == 0) {
        q.method = *method == 'G' ? MH__TWIN_REQUEST__METHOD__GET_TEMPLATE
                                  : MH__TWIN_REQUEST__METHOD__DELETE_TEMPLATE;
        return fs_twin(self, c, &q, false);
    }
    if (strcmp(method, "PUT") != 0)
        return fs_error(self, c, 405, "method_not_allowed", "GET, PUT or DELETE");
    json_t *b = fs_body_object(self, c, true);
    if (!b)
        return 400;
    char *text = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    q.method = MH__TWIN_REQUEST__METHOD__PUT_TEMPLATE;
    q.params_json = text ? text : "";
    int st = fs_twin(self, c, &q, false);
    free(text);
    return st;
}
