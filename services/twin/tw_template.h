/* tw_template — fleet provisioning templates (pure: jansson and regex).
 *
 * A template decides what a device registering through it becomes: its
 * device id (the AWS thing name), tags, initial desired state and the
 * deviceConfiguration RegisterThing answers with, from the parameters the
 * device sends. Two spellings are accepted (docs/aws-migration.md):
 *
 * Motehub's:
 *   {"parameters":{"SerialNumber":{"pattern":"^[0-9A-F]{8}$"},
 *                  "Model":{"default":"m1"}},
 *    "thingName":"sensor-{SerialNumber}",
 *    "tags":{"model":"{Model}"}, "desired":{"interval":30},
 *    "deviceConfiguration":{"Fallback":"{Model}"}, "enabled":true}
 * AWS IoT's (the subset its fleet-provisioning templates use):
 *   {"Parameters":{"SerialNumber":{"Type":"String","AllowedPattern":"..."}},
 *    "Resources":{"thing":{"Type":"AWS::IoT::Thing","Properties":{
 *        "ThingName":{"Fn::Join":["",["sensor-",{"Ref":"SerialNumber"}]]},
 *        "AttributePayload":{"model":{"Ref":"Model"}}}}, ...},
 *    "DeviceConfiguration":{...}}
 * Strings in either may hold {Name} placeholders, and values may be
 * {"Ref":"Name"} or {"Fn::Join":[sep,[...]]}. Patterns are POSIX extended
 * regular expressions, matched against the whole value. */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define TW_TEMPLATE_MAX (16 * 1024) /* serialized bytes */

/* Checks a template's body; false with a message naming the problem. */
bool tw_template_check(json_t *body, char *err, size_t errlen);
/* Whether a checked template takes registrations ("enabled", default true). */
bool tw_template_enabled(json_t *body);

/* Applies a checked template to a device's parameters (an object of
 * strings): {"thingName":s, "tags":{}, "desired":{}, "deviceConfiguration":{}}.
 * NULL with a message when a parameter is missing, not a string, does not
 * match its pattern, or the thing name is not a device id. */
json_t *tw_template_apply(json_t *body, json_t *parameters, char *err, size_t errlen);
