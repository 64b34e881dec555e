/* sim_fleet — what makes one simulated device unlike another, decided by
 * its id alone, so that every run and every process agrees: which share of
 * the fleet a device falls in, and its tags. */
#pragma once
#include <stdbool.h>
#include <stddef.h>

/* A number in [0, 1) from the device id and a salt (FNV-1a, mixed). A
 * device is in "the first 10 %" for a salt when this is below 0.1. */
double sim_share_of(const char *device, const char *salt);

/* Tags from a spec "key=value:weight,value:weight;key2=..." (a weight is a
 * positive number, 1 when left out): each device gets one value of every
 * key, picked by weight, plus "sim": true. 0, or -1 with `why` filled. */
int sim_tags_check(const char *spec, char *why, size_t whylen);
/* The device's tags as a JSON object's text (malloc'd); NULL on a bad spec
 * or no memory. */
char *sim_tags_json(const char *spec, const char *device);

/* --ota-fail "VERSION:SHARE,...": does installing `version` fail on this
 * device? The same answer every run. */
bool sim_ota_fails(const char *spec, const char *device, const char *version);

/* Firmware that installs fine and then misbehaves, on a share of the
 * devices running it: "VERSION:SHARE:MODE,..." with MODE one of */
enum {
    SIM_BAD_RECONNECT = 1, /* a crash loop: drops its connection every few seconds */
    SIM_BAD_HOT = 2,       /* runs 15 °C hotter */
    SIM_BAD_DRAIN = 4,     /* its battery drains a hundred times faster */
    SIM_BAD_ERRORS = 8,    /* reports errors (metric "errors", otherwise 0) */
};
int sim_misbehave_check(const char *spec, char *why, size_t whylen);
/* The modes (a mask) the device shows running `firmware`; the same
 * devices every run. */
unsigned sim_misbehaves(const char *spec, const char *device, const char *firmware);
/* Does the spec make any device report errors (then all report "errors")? */
bool sim_misbehave_errors(const char *spec);
