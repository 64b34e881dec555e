#include "mh_cohort.h"

json_t *mh_cohort_rows(json_t *cohorts, json_t *out, json_t *empty)
{
    if (!json_is_object(cohorts))
        return NULL;
    json_t *rows = json_array(), *list;
    const char *name;
    size_t total = 0;
    json_object_foreach(cohorts, name, list)
    {
        json_object_set_new(out, name, json_deep_copy(empty));
        if (!json_is_array(list))
            goto bad;
        size_t i;
        json_t *e;
        json_array_foreach(list, i, e)
        {
            const char *id = json_string_value(json_array_get(e, 0));
            json_t *f = json_array_get(e, 1), *t = json_array_get(e, 2);
            if (!id || !json_is_integer(f) || !json_is_integer(t) ||
                json_integer_value(t) < json_integer_value(f) || ++total > MH_COHORT_MAX_DEVICES)
                goto bad;
            json_array_append_new(
                rows, json_pack("{s:s,s:s,s:O,s:O}", "c", name, "id", id, "f", f, "t", t));
        }
    }
    return rows;
bad:
    json_decref(rows);
    return NULL;
}
