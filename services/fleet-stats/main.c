#include "fs_service.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* motehub-fleet-stats [options]            run the API
 * motehub-fleet-stats create-token NAME    make an API token (prints it once)
 * motehub-fleet-stats list-tokens          names, prefixes, created, revoked
 * motehub-fleet-stats revoke-token NAME    revoke (by name or printed prefix)
 * (the database from MH_PG_URL or --pg-url=URL) */
int main(int argc, char **argv)
{
    const char *cmd = argc >= 2 ? argv[1] : "";
    bool create = strcmp(cmd, "create-token") == 0, revoke = strcmp(cmd, "revoke-token") == 0,
         list = strcmp(cmd, "list-tokens") == 0;
    if (create || revoke || list) {
        const char *name = NULL;
        const char *url = getenv("MH_PG_URL");
        for (int i = 2; i < argc; i++)
            if (strncmp(argv[i], "--pg-url=", 9) == 0)
                url = argv[i] + 9;
            else if (!name)
                name = argv[i];
        if (!list && (!name || !*name)) {
            fprintf(stderr, "usage: %s create-token|revoke-token NAME [--pg-url=URL]\n", argv[0]);
            return 2;
        }
        url = url ? url : "postgresql://postgres@127.0.0.1:5433/motehub";
        return create ? fs_create_token(url, name)
               : list ? fs_list_tokens(url)
                      : fs_revoke_token(url, name);
    }
    return mh_service_main(&fs_service_def, argc, argv);
}
