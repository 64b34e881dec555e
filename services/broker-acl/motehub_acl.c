/* motehub_acl — a mosquitto 2.0 plugin: the device topic ACL, counted.
 *
 * With `use_identity_as_username true` on the mTLS listener the username is
 * the client certificate's CN. A device (CN = its device id) may publish,
 * subscribe and receive only under devices/<its CN>/ and the AWS IoT
 * device APIs' $aws/things/<its CN>/{shadow,jobs}/; a platform service
 * (CN starting "motehub:", which no device id can contain) may use every
 * topic. Everything else is denied — MQTT 5 clients get reason code 0x87 on
 * their PUBACK / SUBACK — and counted; the counts are published (retained,
 * when they change, at most once a second) on $SYS/motehub/acl as
 * {"denied_publish":N,"denied_subscribe":N,"denied_receive":N}, which the
 * gateway exports as metrics, with "crl_next_update" (the CRL's nextUpdate,
 * seconds since the epoch; motehub_crl.h). Denials are logged, at most 10 a
 * second.
 *
 * mosquitto.conf (global: mosquitto 2.0.11 runs plugin ticks only for
 * global plugins; deploy/mosquitto/mosquitto-conf.sh writes it):
 *   plugin /usr/lib/motehub/motehub_acl.so
 *   plugin_opt_service_prefix motehub:      (optional; the default)
 *   plugin_opt_anonymous allow              (local mode's plain loopback
 *                                            listener only: clients without a
 *                                            username may use every topic)
 *   plugin_opt_presence_interval 30         (seconds; 0: off. The connected
 *                                            devices on motehub/present,
 *                                            motehub_presence.h)
 *   plugin_opt_crl_file /path/crl.pem       (the listener's crlfile)
 *   plugin_opt_pg_conninfo "host=..."       (fleet provisioning: where
 *                                            twin.certificates is,
 *                                            motehub_certmap.h)
 *
 * Fleet provisioning (shared/spec/aws-iot-compat.md): a claim certificate
 * (CN "claim:NAME") may use only the provisioning topics, and its requests
 * go on as motehub/aws/provision/<client id>/... for twin to answer that
 * client alone. A certificate twin issued (CN "cert:<id>") is the device
 * RegisterThing bound it to: its topics, presence and direct replies are
 * that device's. */
#include "motehub_certmap.h"
#include "motehub_crl.h"
#include "motehub_presence.h"

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    mosquitto_plugin_id_t *id;
    char *service_prefix;
    int anonymous_allowed;
    unsigned long long denied[3], published[3];
    char *crl_file;
    time_t crl_next, crl_published, crl_checked;
    time_t last_publish, log_second;
    int logged_this_second;
} s_acl_t;

static s_acl_t s_acl;

int mosquitto_plugin_version(int n, const int *versions)
{
    for (int i = 0; i < n; i++)
        if (versions[i] == 5)
            return 5;
    return -1;
}

static const char *s_access_name(int access)
{
    switch (access) {
    case MOSQ_ACL_WRITE:
        return "publish";
    case MOSQ_ACL_SUBSCRIBE:
        return "subscribe";
    case MOSQ_ACL_READ:
        return "receive";
    default:
        return "unsubscribe";
    }
}

/* True when `topic` is under `prefix`<id>/ (a filter's wildcards may only
 * follow that). */
static int s_under(const char *topic, const char *prefix, const char *id)
{
    size_t p = strlen(prefix), n = strlen(id);
    return strncmp(topic, prefix, p) == 0 && strncmp(topic + p, id, n) == 0 &&
           topic[p + n] == '/' && topic[p + n + 1] != '\0';
}

/* A device's own topics: devices/<id>/..., and the AWS IoT device APIs
 * under $aws/things/<id>/shadow/... and $aws/things/<id>/jobs/...
 * (shared/spec/aws-iot-compat.md), with the SDKs' wildcard filters. */
static int s_own_topic(const char *topic, const char *id)
{
    if (s_under(topic, "devices/", id))
        return 1;
    if (!s_under(topic, "$aws/things/", id))
        return 0;
    const char *rest = topic + strlen("$aws/things/") + strlen(id) + 1;
    return strncmp(rest, "shadow/", 7) == 0 || strncmp(rest, "jobs/", 5) == 0;
}

static bool s_prefixed(const char *s, const char *prefix)
{
    return s && strncmp(s, prefix, strlen(prefix)) == 0;
}

/* The provisioning request topics (claim certificates publish these) and,
 * with "/accepted", "/rejected", "/+" or "/#" after them, their replies. */
static bool s_provision_topic(const char *topic, bool request)
{
    static const char *const bases[] = {"$aws/certificates/create/json",
                                        "$aws/certificates/create-from-csr/json", NULL};
    const char *rest = NULL;
    for (int i = 0; bases[i] && !rest; i++)
        if (s_prefixed(topic, bases[i]))
            rest = topic + strlen(bases[i]);
    if (!rest && s_prefixed(topic, "$aws/provisioning-templates/")) {
        const char *t = topic + strlen("$aws/provisioning-templates/"), *slash = strchr(t, '/');
        if (slash && slash > t && !memchr(t, '+', (size_t)(slash - t)) &&
            !memchr(t, '#', (size_t)(slash - t)) && s_prefixed(slash, "/provision/json"))
            rest = slash + strlen("/provision/json");
    }
    if (!rest)
        return false;
    if (request)
        return *rest == 0;
    return *rest == 0 || strcmp(rest, "/accepted") == 0 || strcmp(rest, "/rejected") == 0 ||
           strcmp(rest, "/+") == 0 || strcmp(rest, "/#") == 0;
}

typedef enum { S_ANONYMOUS, S_SERVICE, S_DEVICE, S_CLAIM, S_UNBOUND } s_kind_t;

/* Who a client is: a service, a claim certificate, a device (its CN, or
 * the device a provisioned certificate is bound to; S_UNBOUND when that is
 * not known) or, without a certificate, anonymous. *who: the device's id,
 * the claim's CN, or the anonymous client's id. */
static s_kind_t s_identify(s_acl_t *self, struct mosquitto *client, const char **who)
{
    const char *user = mosquitto_client_username(client);
    *who = user;
    if (!user) {
        *who = mosquitto_client_id(client);
        return S_ANONYMOUS;
    }
    if (s_prefixed(user, self->service_prefix))
        return S_SERVICE;
    if (s_prefixed(user, "claim:"))
        return S_CLAIM;
    if (s_prefixed(user, "cert:")) {
        *who = certmap_thing(user);
        return *who ? S_DEVICE : S_UNBOUND;
    }
    return S_DEVICE;
}

/* An "offline" status is the device saying goodbye — and its last will,
 * which the broker publishes (and checks here) after the disconnect: the
 * device is gone. Any other use of the broker says it is here. */
static void s_presence(const struct mosquitto_evt_acl_check *e, const char *who)
{
    size_t n = strlen(who);
    bool status = e->access == MOSQ_ACL_WRITE && strncmp(e->topic, "devices/", 8) == 0 &&
                  strncmp(e->topic + 8, who, n) == 0 && strcmp(e->topic + 8 + n, "/status") == 0;
    if (status && e->payload && memmem(e->payload, e->payloadlen, "\"offline\"", 9))
        presence_gone(who);
    else
        presence_seen(who);
}

static int s_on_acl(int event, void *data, void *ud)
{
    (void)event;
    s_acl_t *self = ud;
    struct mosquitto_evt_acl_check *e = data;
    const char *user = mosquitto_client_username(e->client);
    if (e->access == MOSQ_ACL_UNSUBSCRIBE)
        return MOSQ_ERR_SUCCESS; /* dropping a subscription never hurts */
    /* a device is present: its CN (or its provisioned certificate's
     * device), or on the anonymous loopback listener its client id
     * (platform services and claim certificates are not devices) */
    const char *who;
    s_kind_t kind = s_identify(self, e->client, &who);
    if (who && (kind == S_DEVICE || kind == S_ANONYMOUS))
        s_presence(e, who);
    if (kind == S_ANONYMOUS && self->anonymous_allowed)
        return MOSQ_ERR_SUCCESS;
    if (kind == S_SERVICE)
        return MOSQ_ERR_SUCCESS;
    if (kind == S_DEVICE && s_own_topic(e->topic, who))
        return MOSQ_ERR_SUCCESS;
    if (kind == S_CLAIM && s_provision_topic(e->topic, e->access == MOSQ_ACL_WRITE))
        return MOSQ_ERR_SUCCESS;
    int k = e->access == MOSQ_ACL_WRITE ? 0 : e->access == MOSQ_ACL_SUBSCRIBE ? 1 : 2;
    self->denied[k]++;
    time_t now = time(NULL);
    if (now != self->log_second) {
        self->log_second = now;
        self->logged_this_second = 0;
    }
    if (self->logged_this_second++ < 10)
        mosquitto_log_printf(MOSQ_LOG_NOTICE, "motehub_acl: denied %s of \"%s\" to %s (user %s%s)",
                             s_access_name(e->access), e->topic,
                             mosquitto_client_id(e->client) ? mosquitto_client_id(e->client) : "?",
                             user ? user : "(none)",
                             kind == S_UNBOUND ? ", a certificate no device is registered with"
                                               : "");
    return MOSQ_ERR_ACL_DENIED;
}

/* A device's AWS IoT request ($aws/things/<id>/...) goes on as
 * motehub/aws/things/<id>/...: mosquitto 2.0 never matches a shared
 * subscription's filter against a topic starting with '$', so the gateways
 * take the requests on $share/<group>/motehub/aws/... (gw_mqtt.c).
 *
 * A service's publish to motehub/to/<client id>/<topic> is delivered as
 * <topic> to that client alone, whether or not it subscribed (AWS IoT
 * answers a request so: the embedded SDK's jobs demo subscribes only to
 * notify-next). Nobody subscribes to motehub/to/, so nothing else gets it. */
/* A reply or notification of the AWS IoT APIs (a gateway on the anonymous
 * loopback listener publishes them too): it stays where it is. */
static bool s_aws_reply(const char *topic)
{
    const char *last = strrchr(topic, '/');
    static const char *const replies[] = {"accepted", "rejected",    "delta", "documents",
                                          "notify",   "notify-next", NULL};
    for (int i = 0; last && replies[i]; i++)
        if (strcmp(last + 1, replies[i]) == 0)
            return true;
    return false;
}

static int s_on_message(int event, void *data, void *ud)
{
    (void)event;
    s_acl_t *self = ud;
    struct mosquitto_evt_message *e = data;
    const char *user = mosquitto_client_username(e->client);
    bool service = user && strncmp(user, self->service_prefix, strlen(self->service_prefix)) == 0;
    if (!e->topic)
        return MOSQ_ERR_SUCCESS;
    if (s_prefixed(user, "claim:") && s_provision_topic(e->topic, true)) {
        /* motehub/aws/provision/<client id>/<the topic after "$aws/"> */
        const char *id = mosquitto_client_id(e->client);
        size_t n = strlen(e->topic) + strlen(id) + sizeof "motehub/aws/provision//";
        char *t = mosquitto_malloc(n);
        if (!t)
            return MOSQ_ERR_NOMEM;
        snprintf(t, n, "motehub/aws/provision/%s/%s", id, e->topic + 5);
        mosquitto_free(e->topic);
        e->topic = t;
        return MOSQ_ERR_SUCCESS;
    }
    /* services, and on local mode's anonymous loopback listener anybody */
    bool trusted = service || (!user && self->anonymous_allowed);
    if (trusted && strncmp(e->topic, "motehub/to/", 11) == 0) {
        const char *client = e->topic + 11, *slash = strchr(client, '/');
        if (!slash || slash == client || !slash[1] || slash - client > 128)
            return MOSQ_ERR_SUCCESS;
        char id[129];
        memcpy(id, client, (size_t)(slash - client));
        id[slash - client] = 0;
        /* a provisioned device's client id is its certificate's CN */
        const char *cn = certmap_client(id);
        mosquitto_broker_publish_copy(cn ? cn : id, slash + 1, (int)e->payloadlen, e->payload,
                                      e->qos, false, NULL);
        return MOSQ_ERR_SUCCESS;
    }
    if (service || strncmp(e->topic, "$aws/things/", 12) != 0 || s_aws_reply(e->topic))
        return MOSQ_ERR_SUCCESS;
    size_t n = strlen(e->topic);
    char *t = mosquitto_malloc(n + sizeof "motehub/");
    if (!t)
        return MOSQ_ERR_NOMEM;
    memcpy(t, "motehub/", 8);
    memcpy(t + 8, e->topic + 1, n); /* "aws/things/..." and the NUL */
    mosquitto_free(e->topic);
    e->topic = t;
    return MOSQ_ERR_SUCCESS;
}

static int s_on_disconnect(int event, void *data, void *ud)
{
    (void)event;
    (void)ud;
    struct mosquitto_evt_disconnect *e = data;
    const char *who;
    s_kind_t kind = s_identify(ud, e->client, &who);
    if (who && (kind == S_DEVICE || kind == S_ANONYMOUS))
        presence_gone(who);
    return MOSQ_ERR_SUCCESS;
}

static int s_on_tick(int event, void *data, void *ud)
{
    (void)event;
    (void)data;
    s_acl_t *self = ud;
    time_t now = time(NULL);
    presence_tick(now);
    if (self->crl_file && now - self->crl_checked >= 10) {
        self->crl_checked = now;
        self->crl_next = crl_next_update(self->crl_file);
    }
    if (now == self->last_publish ||
        (memcmp(self->denied, self->published, sizeof self->denied) == 0 &&
         self->crl_next == self->crl_published))
        return MOSQ_ERR_SUCCESS;
    self->last_publish = now;
    memcpy(self->published, self->denied, sizeof self->denied);
    self->crl_published = self->crl_next;
    char payload[200];
    int n = snprintf(payload, sizeof payload,
                     "{\"denied_publish\":%llu,\"denied_subscribe\":%llu,\"denied_receive\":%llu,"
                     "\"crl_next_update\":%lld}",
                     self->denied[0], self->denied[1], self->denied[2], (long long)self->crl_next);
    mosquitto_broker_publish_copy(NULL, "$SYS/motehub/acl", n, payload, 0, true, NULL);
    return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *id, void **ud, struct mosquitto_opt *opts,
                          int nopts)
{
    s_acl_t *self = &s_acl;
    memset(self, 0, sizeof *self);
    self->id = id;
    const char *prefix = "motehub:";
    int presence_interval = 30;
    for (int i = 0; i < nopts; i++)
        if (strcmp(opts[i].key, "service_prefix") == 0 && opts[i].value && *opts[i].value)
            prefix = opts[i].value;
        else if (strcmp(opts[i].key, "anonymous") == 0 && opts[i].value)
            self->anonymous_allowed = strcmp(opts[i].value, "allow") == 0;
        else if (strcmp(opts[i].key, "presence_interval") == 0 && opts[i].value)
            presence_interval = atoi(opts[i].value);
        else if (strcmp(opts[i].key, "crl_file") == 0 && opts[i].value && *opts[i].value)
            self->crl_file = strdup(opts[i].value);
        else if (strcmp(opts[i].key, "pg_conninfo") == 0 && opts[i].value)
            certmap_init(opts[i].value);
    self->service_prefix = strdup(prefix);
    if (!self->service_prefix || presence_init(presence_interval) < 0)
        return MOSQ_ERR_NOMEM;
    *ud = self;
    /* the counters start at zero on every broker start: say so at once */
    self->published[0] = 1;
    int rc = mosquitto_callback_register(id, MOSQ_EVT_ACL_CHECK, s_on_acl, NULL, self);
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_callback_register(id, MOSQ_EVT_TICK, s_on_tick, NULL, self);
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_callback_register(id, MOSQ_EVT_DISCONNECT, s_on_disconnect, NULL, self);
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_callback_register(id, MOSQ_EVT_MESSAGE, s_on_message, NULL, self);
    mosquitto_log_printf(MOSQ_LOG_INFO, "motehub_acl: devices/<CN>/ only; services \"%s*\"",
                         self->service_prefix);
    return rc;
}

int mosquitto_plugin_cleanup(void *ud, struct mosquitto_opt *opts, int nopts)
{
    (void)opts;
    (void)nopts;
    s_acl_t *self = ud;
    mosquitto_callback_unregister(self->id, MOSQ_EVT_ACL_CHECK, s_on_acl, NULL);
    mosquitto_callback_unregister(self->id, MOSQ_EVT_TICK, s_on_tick, NULL);
    mosquitto_callback_unregister(self->id, MOSQ_EVT_DISCONNECT, s_on_disconnect, NULL);
    mosquitto_callback_unregister(self->id, MOSQ_EVT_MESSAGE, s_on_message, NULL);
    presence_cleanup();
    certmap_cleanup();
    free(self->service_prefix);
    self->service_prefix = NULL;
    free(self->crl_file);
    self->crl_file = NULL;
    return MOSQ_ERR_SUCCESS;
}
