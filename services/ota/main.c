#include "ota_service.h"

int main(int argc, char **argv)
{
    return mh_service_main(&ota_service_def, argc, argv);
}
