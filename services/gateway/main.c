#include "gw_service.h"

int main(int argc, char **argv)
{
    return mh_service_main(&gw_service_def, argc, argv);
}
