/* motectl — the operator CLI over the HTTP API (shared/spec/operator-api.md).
 *
 *   motectl [--url URL] [--token TOKEN] [--json] COMMAND ...
 *
 * URL and token also come from MOTEHUB_URL and MOTEHUB_TOKEN. Output is a
 * readable table, or the API's JSON as is with --json (for scripts). Exit
 * status: 0 on success, 1 when the API answered an error (its message on
 * stderr), 2 on a usage error, 3 when the API could not be reached. */
#include "mc_ca.h"
#include "mc_cli.h"
#include "mh_json.h"
#include "mh_curve.h"
#include "mh_http_client.h"

#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *mc_usage =
    "usage: motectl [--url URL] [--token TOKEN] [--json] COMMAND ...\n"
    "\n"
    "devices:\n"
    "  devices list [--status online|offline] [--firmware V] [--tag K:V]... [--q PREFIX]\n"
    "               [--limit N] [--all]\n"
    "  devices get ID | register ID [K=V ...] | delete ID\n"
    "twins and commands:\n"
    "  twin get ID\n"
    "  twin set ID KEY=JSON ... [--if-match VERSION]   (desired; JSON null deletes)\n"
    "  twin tag ID KEY=VALUE ...\n"
    "  command send ID NAME [PARAMS-JSON] [--ttl S] [--timeout S]\n"
    "  command list ID | command get ID CID\n"
    "telemetry:\n"
    "  telemetry ID [--metric M]... [--from T] [--to T] [--bucket raw|1m|1h|auto] [--limit N]\n"
    "  telemetry latest ID\n"
    "firmware and rollouts:\n"
    "  firmware upload FILE --version V [--hardware H] | list | get V | signing-key\n"
    "  rollout create --firmware V [--waves 1,10,100] [--tag K:V]... [--from-firmware V]\n"
    "                 [--success 0.95] [--failure 0.05] [--soak S] [--max-per-minute N]\n"
    "                 [--on-failure rollback|pause] [--stratify-by TAG,...] [--health JSON]\n"
    "                 [--json-spec JSON]\n"
    "  rollout list | get ID | pause ID | resume ID | abort ID | rollback ID | jobs ID\n"
    "jobs (a rollout of a JSON document; AWS IoT devices run them, docs/aws-migration.md):\n"
    "  job create --document JSON [the rollout options but --firmware, --on-failure]\n"
    "  job list | get ID | pause ID | resume ID | abort ID | executions ID\n"
    "named shadows (AWS IoT Device Shadow; the classic shadow is the twin):\n"
    "  shadow list ID | get ID NAME | delete ID NAME\n"
    "  shadow set ID NAME KEY=JSON ... [--version N]   (desired; JSON null deletes)\n"
    "fleet provisioning (devices with a claim certificate register through a template):\n"
    "  template list | get NAME | delete NAME\n"
    "  template put NAME FILE|-   (Motehub's or AWS IoT's template JSON; docs/aws-migration.md)\n"
    "fleet and tokens:\n"
    "  fleet summary | fleet geo\n"
    "  token create NAME | token list | token revoke NAME|PREFIX   [--pg-url URL]\n"
    "        (run motehub-fleet-stats where the database is; a revoked token stops\n"
    "         working on every replica within 5 s)\n"
    "certificates (the fleet CA, kept outside the repository; motectl ca --help):\n"
    "  ca init | ca issue ID... | ca issue --prefix P --count N | ca sign CSR\n"
    "  ca issue --claim NAME   (a claim certificate: fleet provisioning only)\n"
    "  ca revoke ID|SERIAL | ca crl | ca list     [--ca-dir DIR]\n"
    "CURVE keys for the internal ZeroMQ sockets (services take --curve-dir DIR):\n"
    "  curve keygen --out DIR [NAME...]   (default names: gateway ingest twin ota\n"
    "        fleet-stats tools; existing keys are kept)\n"
    "\n"
    "URL and TOKEN default to $MOTEHUB_URL and $MOTEHUB_TOKEN.\n";

static void s_t_summary(json_t *v)
{
    json_t *d = json_object_get(v, "devices"), *rates = json_object_get(v, "rates");
    printf("devices   %s total, %s online, %s offline\n", mc_str(d, "total"), mc_str(d, "online"),
           mc_str(d, "offline"));
    printf("messages  %s/s in, %s/s out\n", mc_str(rates, "in"), mc_str(rates, "out"));
    const char *k;
    json_t *x;
    printf("firmware ");
    json_object_foreach(json_object_get(v, "firmware"), k, x)
        printf("  %s: %" JSON_INTEGER_FORMAT, k, json_integer_value(x));
    printf("\n");
    json_object_foreach(json_object_get(v, "health"), k, x)
    {
        printf("%-9s", k);
        const char *b;
        json_t *n;
        json_object_foreach(x, b, n)
            printf("  %s: %" JSON_INTEGER_FORMAT, b, json_integer_value(n));
        printf("\n");
    }
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(v, "rollouts"), i, r) mc_t_rollout(r);
}

/* ---- commands ---- */

static int s_fleet(int argc, char **argv)
{
    NEED(1);
    int rc;
    if (strcmp(argv[0], "summary") == 0)
        return mc_out(mc_call("GET", "/api/v1/fleet/summary", NULL, NULL, &rc), s_t_summary) ? rc
                                                                                             : 0;
    if (strcmp(argv[0], "geo") == 0)
        return mc_out(mc_call("GET", "/api/v1/fleet/geo", NULL, NULL, &rc), NULL) ? rc : 0;
    fputs(mc_usage, stderr);
    return 2;
}

/* Tokens are made where the database is: by fleet-stats' own command,
 * found next to motectl in a build tree or on PATH. */
static int s_tokens(int argc, char **argv, const char *self)
{
    NEED(1);
    mc_opt_t o[] = {{"pg-url"}};
    char *pos[4];
    int np;
    const char *sub = strcmp(argv[0], "create") == 0   ? "create-token"
                      : strcmp(argv[0], "revoke") == 0 ? "revoke-token"
                      : strcmp(argv[0], "list") == 0   ? "list-tokens"
                                                       : NULL;
    if (!sub || mc_opts(argc - 1, argv + 1, o, 1, pos, &np) || (np != 1 && *sub != 'l')) {
        fputs(mc_usage, stderr);
        return 2;
    }
    char bin[1024];
    const char *slash = strrchr(self, '/');
    snprintf(bin, sizeof bin, "%.*s/../../services/fleet-stats/motehub-fleet-stats",
             slash ? (int)(slash - self) : 1, slash ? self : ".");
    FILE *f = fopen(bin, "r");
    if (f)
        fclose(f);
    else
        snprintf(bin, sizeof bin, "motehub-fleet-stats");
    char *args[] = {bin, (char *)sub, NULL, NULL, NULL};
    int k = 2;
    if (np == 1)
        args[k++] = pos[0];
    char pg[1024];
    if (mc_opt(o, 1, "pg-url")) {
        snprintf(pg, sizeof pg, "--pg-url=%s", mc_opt(o, 1, "pg-url"));
        args[k++] = pg;
    }
    fflush(NULL);
    execvp(bin, args);
    perror(bin);
    return 3;
}

/* motectl curve keygen --out DIR [NAME...] */
static int s_curve(int argc, char **argv)
{
    static const char *defaults[] = {"gateway", "ingest", "twin", "ota", "fleet-stats", "tools"};
    if (argc < 3 || strcmp(argv[0], "keygen") != 0 || strcmp(argv[1], "--out") != 0) {
        fputs(mc_usage, stderr);
        return 2;
    }
    const char *dir = argv[2];
    const char *const *names = argc > 3 ? (const char *const *)argv + 3 : defaults;
    size_t n = argc > 3 ? (size_t)(argc - 3) : sizeof defaults / sizeof *defaults;
    for (size_t i = 0; i < n; i++)
        if (!mc_valid_device_id(names[i]) || strcmp(names[i], "server") == 0) {
            fprintf(stderr, "motectl: bad key name \"%s\"\n", names[i]);
            return 2;
        }
    if (mh_curve_keygen(dir, names, n) != 0) {
        fprintf(stderr, "motectl: cannot write keys in %s: %s\n", dir, strerror(errno));
        return 1;
    }
    printf("CURVE keys in %s: server.key (+ secret), ", dir);
    for (size_t i = 0; i < n; i++)
        printf("%s%s.key_secret", i ? ", " : "", names[i]);
    printf("; the services accept the public keys in %s/clients/\n", dir);
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {{"url", required_argument, NULL, 'u'},
                                             {"token", required_argument, NULL, 't'},
                                             {"json", no_argument, NULL, 'j'},
                                             {"help", no_argument, NULL, 'h'},
                                             {NULL, 0, NULL, 0}};
    const char *self = argv[0];
    if (getenv("MOTEHUB_URL"))
        mc_url = getenv("MOTEHUB_URL");
    mc_token = getenv("MOTEHUB_TOKEN");
    int c;
    /* "+": options stop at the command, whose own options come after it */
    while ((c = getopt_long(argc, argv, "+u:t:jh", longopts, NULL)) != -1) {
        switch (c) {
        case 'u':
            mc_url = optarg;
            break;
        case 't':
            mc_token = optarg;
            break;
        case 'j':
            mc_json = true;
            break;
        case 'h':
            fputs(mc_usage, stdout);
            return 0;
        default:
            fputs(mc_usage, stderr);
            return 2;
        }
    }
    argc -= optind;
    argv += optind;
    /* --json may also follow the command */
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--json") == 0) {
            mc_json = true;
            memmove(argv + i, argv + i + 1, (size_t)(argc - i - 1) * sizeof *argv);
            argc--, i--;
        }
    if (argc < 1) {
        fputs(mc_usage, stderr);
        return 2;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int rc;
    const char *cmd = argv[0];
    if (strcmp(cmd, "devices") == 0 || strcmp(cmd, "device") == 0)
        rc = mc_devices(argc - 1, argv + 1);
    else if (strcmp(cmd, "twin") == 0)
        rc = mc_twin(argc - 1, argv + 1);
    else if (strcmp(cmd, "command") == 0 || strcmp(cmd, "commands") == 0)
        rc = mc_command(argc - 1, argv + 1);
    else if (strcmp(cmd, "telemetry") == 0)
        rc = mc_telemetry(argc - 1, argv + 1);
    else if (strcmp(cmd, "firmware") == 0)
        rc = mc_firmware(argc - 1, argv + 1);
    else if (strcmp(cmd, "rollout") == 0 || strcmp(cmd, "rollouts") == 0)
        rc = mc_rollout(argc - 1, argv + 1, false);
    else if (strcmp(cmd, "job") == 0 || strcmp(cmd, "jobs") == 0)
        rc = mc_rollout(argc - 1, argv + 1, true);
    else if (strcmp(cmd, "shadow") == 0 || strcmp(cmd, "shadows") == 0)
        rc = mc_shadow(argc - 1, argv + 1);
    else if (strcmp(cmd, "template") == 0 || strcmp(cmd, "templates") == 0)
        rc = mc_template(argc - 1, argv + 1);
    else if (strcmp(cmd, "fleet") == 0)
        rc = s_fleet(argc - 1, argv + 1);
    else if (strcmp(cmd, "token") == 0 || strcmp(cmd, "tokens") == 0)
        rc = s_tokens(argc - 1, argv + 1, self);
    else if (strcmp(cmd, "ca") == 0)
        rc = mc_ca_main(argc - 1, argv + 1);
    else if (strcmp(cmd, "curve") == 0)
        rc = s_curve(argc - 1, argv + 1);
    else {
        fputs(mc_usage, stderr);
        rc = 2;
    }
    curl_global_cleanup();
    return rc;
}
