#include "fs_service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* motehub-fleet-stats [options]            run the API
 * motehub-fleet-stats create-token NAME    make an API token (prints it once;
 *                                          MH_PG_URL or --pg-url=URL) */
int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "create-token") == 0) {
        const char *name = argc >= 3 ? argv[2] : NULL;
        const char *url = getenv("MH_PG_URL");
        for (int i = 3; i < argc; i++)
            if (strncmp(argv[i], "--pg-url=", 9) == 0)
                url = argv[i] + 9;
        if (!name || !*name) {
            fprintf(stderr, "usage: %s create-token NAME [--pg-url=URL]\n", argv[0]);
            return 2;
        }
        return fs_create_token(url ? url : "postgresql://postgres@127.0.0.1:5433/motehub", name);
    }
    return mh_service_main(&fs_service_def, argc, argv);
}
