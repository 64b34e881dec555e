#include "tw_service.h"

int main(int argc, char **argv)
{
    return mh_service_main(&tw_service_def, argc, argv);
}
