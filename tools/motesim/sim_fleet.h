/* sim_fleet — what makes one simulated device unlike another, decided by
 * its id alone, so that every run and every process agrees: which share of
 * the fleet a device falls in, and its tags. */
#pragma once
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
