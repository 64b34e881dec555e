/* twin: What a transaction publishes and sends once it commits: downlinks
 * grouped per device, and events, flushed after COMMIT (tw_internal.h). */
#include "tw_internal.h"

/* ---- what a transaction sends once it commits ---- */

void tw_out_init(tw_out_t *o)
{
    memset(o, 0, sizeof *o);
    o->dl_index = zhashx_new();
    o->events = zlist_new();
}

void tw_out_clear(tw_out_t *o)
{
    for (size_t i = 0; i < o->ndl; i++) {
        for (size_t j = 0; j < o->dls[i].n; j++) {
            free(o->dls[i].pubs[j]->topic);
            free(o->dls[i].pubs[j]->payload.data);
            free(o->dls[i].pubs[j]);
        }
        free(o->dls[i].pubs);
        free(o->dls[i].commands);
    }
    free(o->dls);
    o->dls = NULL;
    o->ndl = o->capdl = 0;
    zhashx_purge(o->dl_index);
    zmsg_t *m;
    while ((m = zlist_pop(o->events)))
        zmsg_destroy(&m);
}

void tw_out_destroy(tw_out_t *o)
{
    tw_out_clear(o);
    zhashx_destroy(&o->dl_index);
    zlist_destroy(&o->events);
}

/* Queues a publish to `topic` in the downlink of `device`; `payload` is
 * taken. */
static void s_publish(tw_out_t *o, const char *device, const char *topic, char *payload)
{
    if (!payload)
        return;
    size_t idx = (size_t)(uintptr_t)zhashx_lookup(o->dl_index, device);
    if (!idx) {
        if (o->ndl == o->capdl) {
            o->capdl = o->capdl ? o->capdl * 2 : 64;
            o->dls = realloc(o->dls, o->capdl * sizeof *o->dls);
        }
        memset(&o->dls[o->ndl], 0, sizeof o->dls[o->ndl]);
        snprintf(o->dls[o->ndl].device, sizeof o->dls[o->ndl].device, "%s", device);
        idx = ++o->ndl;
        zhashx_insert(o->dl_index, device, (void *)(uintptr_t)idx);
    }
    tw_dl_t *dl = &o->dls[idx - 1];
    if (dl->n == dl->cap) {
        dl->cap = dl->cap ? dl->cap * 2 : 4;
        dl->pubs = realloc(dl->pubs, dl->cap * sizeof *dl->pubs);
    }
    Mh__Publish *p = malloc(sizeof *p);
    mh__publish__init(p);
    p->topic = strdup(topic);
    p->payload.data = (uint8_t *)payload;
    p->payload.len = strlen(payload);
    p->qos = 1;
    dl->pubs[dl->n++] = p;
}

void tw_out_publish_json(tw_out_t *o, const char *device, const char *sub, json_t *v)
{
    char topic[160];
    snprintf(topic, sizeof topic, "devices/%s/%s", device, sub);
    s_publish(o, device, topic, tw_dumps(v));
    json_decref(v);
}

void tw_out_publish_topic(tw_out_t *o, const char *device, const char *topic, json_t *v)
{
    s_publish(o, device, topic, tw_dumps(v));
    json_decref(v);
}

void tw_out_publish_command(tw_out_t *o, const char *device, const char *id, json_t *v)
{
    tw_out_publish_json(o, device, "commands", v);
    size_t idx = (size_t)(uintptr_t)zhashx_lookup(o->dl_index, device);
    if (!idx)
        return; /* out of memory before anything was queued */
    tw_dl_t *dl = &o->dls[idx - 1];
    char *old = dl->commands;
    if (asprintf(&dl->commands, "%s%s%s", old ? old : "", old ? " " : "", id) < 0)
        dl->commands = NULL; /* out of memory: sent once published is not known for these */
    free(old);
}

void tw_out_event(tw_out_t *o, const char *type, const ProtobufCMessage *body)
{
    zframe_t *f = mh_envelope_pack(type, NULL, body);
    if (!f)
        return;
    zmsg_t *m = zmsg_new();
    zmsg_addstr(m, type);
    zmsg_append(m, &f);
    zlist_append(o->events, m);
}

void tw_out_command_event(tw_out_t *o, const char *device, const char *id, const char *name,
                          const char *status)
{
    Mh__CommandStatus ev = MH__COMMAND_STATUS__INIT;
    ev.device_id = (char *)device;
    ev.command_id = (char *)id;
    ev.name = (char *)name;
    ev.status = (char *)status;
    tw_out_event(o, "command.status", &ev.base);
}

int tw_out_status_index(const char *status)
{
    static const char *names[] = {"queued",   "sent",    "succeeded", "failed",
                                  "rejected", "expired", "timed_out"};
    for (int i = 0; i < 7; i++)
        if (strcmp(status, names[i]) == 0)
            return i;
    return 0;
}

/* Sends what a committed transaction produced. */
void tw_out_flush(tw_t *self, tw_out_t *o)
{
    for (size_t i = 0; i < o->ndl; i++) {
        Mh__Downlink dl = MH__DOWNLINK__INIT;
        dl.publishes = o->dls[i].pubs;
        dl.n_publishes = o->dls[i].n;
        /* one Downlink per device keeps its publishes in order at one
         * gateway */
        if (mh_relay_add_tagged(self->downlink, "downlink", &dl.base, o->dls[i].commands) < 0) {
            mh_counter_add(self->m_downlink_dropped, dl.n_publishes);
            mh_log_limited(&self->rl_warn, MH_LOG_WARN,
                           "out of memory: %zu downlinks to %s dropped", dl.n_publishes,
                           o->dls[i].device);
        } else {
            mh_counter_add(self->m_published, dl.n_publishes);
        }
    }
    if (o->ndl) /* what one transaction publishes goes now, as one batch */
        mh_relay_tick(self->downlink, true);
    zmsg_t *m;
    while ((m = zlist_pop(o->events))) {
        if (self->pub)
            zmsg_send(&m, self->pub);
        zmsg_destroy(&m);
    }
    tw_out_clear(o);
}
