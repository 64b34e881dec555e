#include "in_service.h"

int main(int argc, char **argv)
{
    return mh_service_main(&in_service_def, argc, argv);
}
