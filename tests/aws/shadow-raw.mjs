// Named shadows, and bad input shaped like an SDK's, over a plain MQTT
// connection of the v1 SDK (awsIot.device, mqtt.js) with the thing's
// certificate: every request gets AWS's reply and refusals change nothing.
import awsIot from "aws-iot-device-sdk";
import { api, certFiles, check, deadline, done, env, waitFor } from "./lib.mjs";

const thing = process.env.MH_AWS_THING;
const base = `$aws/things/${thing}/shadow`;
deadline(90000);

const dev = awsIot.device({
  ...certFiles(thing),
  clientId: thing,
  host: env.host,
  port: env.port,
  protocol: "mqtts",
});
await waitFor(dev, "connect");
const granted = await new Promise((resolve) =>
  dev.subscribe([`${base}/#`, `$aws/things/thing-0003/shadow/get/accepted`], { qos: 1 },
    (err, g) => resolve(err ? [] : g)));
check(granted.length === 2 && granted[0].qos === 1, "own shadow topics subscribed", granted);
check(granted.length === 2 && granted[1].qos === 128, "another thing's topics refused (0x80)",
  granted);

// One request; the reply on <topic>/accepted or /rejected as [suffix, doc].
async function ask(topic, payload) {
  const reply = waitFor(dev, "message", (t) =>
    t === `${topic}/accepted` || t === `${topic}/rejected`, 8000);
  dev.publish(topic, typeof payload === "string" || Buffer.isBuffer(payload)
    ? payload : JSON.stringify(payload), { qos: 1 });
  const r = await reply;
  return r ? [r[0].slice(topic.length + 1), JSON.parse(r[1].toString())] : ["none", null];
}

// named shadows: their own versions, 404 when absent, delete keeps counting
const cfg = `${base}/name/config`;
let [how, doc] = await ask(`${base}/name/nothing-here/get`, "");
check(how === "rejected" && doc.code === 404 && /No shadow exists with name: 'nothing-here'/
  .test(doc.message), "get of a named shadow that does not exist: 404", doc);
[how, doc] = await ask(`${cfg}/update`, { state: { desired: { rate: 5 } }, clientToken: "t1" });
check(how === "accepted" && doc.version === 1 && doc.clientToken === "t1" &&
  doc.metadata.desired.rate.timestamp > 0, "first update makes version 1", doc);
[how, doc] = await ask(`${cfg}/update`, { state: { reported: { rate: 4 } }, version: 1 });
check(how === "accepted" && doc.version === 2, "update with the right version", doc);
[how, doc] = await ask(`${cfg}/get`, Buffer.from("{}\0"));
check(how === "accepted" && doc.state.delta.rate === 5 && doc.state.reported.rate === 4,
  "get (with a trailing NUL) shows desired, reported and delta", doc);
[how, doc] = await ask(`${cfg}/update`, { state: { reported: { rate: 9 } }, version: 1 });
check(how === "rejected" && doc.code === 409, "stale version: 409", doc);
[how, doc] = await ask(`${base}/get`, {});
check(how === "accepted" && !(doc.state.desired && doc.state.desired.rate),
  "the classic shadow is a separate document", doc);
[how, doc] = await ask(`${cfg}/delete`, "");
check(how === "accepted" && doc.version === 2, "delete accepted", doc);
[how, doc] = await ask(`${cfg}/get`, "");
check(how === "rejected" && doc.code === 404, "deleted shadow: 404", doc);
[how, doc] = await ask(`${cfg}/update`, { state: { reported: { rate: 1 } } });
check(how === "accepted" && doc.version === 3, "made again, its version continues", doc);

const nest = (n) => (n === 0 ? 1 : { k: nest(n - 1) });

// bad input: AWS's rejection, the clientToken echoed, nothing changed
const bad = [
  ["invalid JSON", "{\"state\":", 400],
  ["missing state", { clientToken: "x" }, 400],
  ["state not an object", { state: 5 }, 400],
  ["unknown node under state", { state: { wanted: {} } }, 400],
  ["desired not an object", { state: { desired: [1] } }, 400],
  ["version not a number", { state: { reported: {} }, version: "2" }, 400],
  ["clientToken over 64 bytes", { state: { reported: {} }, clientToken: "x".repeat(65) }, 400],
  ["nested 9 deep", JSON.stringify({ state: { reported: nest(9) } }), 400],
  ["payload over 8 KB", { state: { reported: { big: "x".repeat(9000) } } }, 413],
];
for (const [what, payload, code] of bad) {
  [how, doc] = await ask(`${cfg}/update`, payload);
  check(how === "rejected" && doc.code === code && typeof doc.message === "string" &&
    typeof doc.timestamp === "number", `${what}: rejected with ${code}`, doc);
}
// the classic shadow is the twin: the keys the platform reads keep their types
[how, doc] = await ask(`${base}/update`, { state: { reported: { firmware: 7 } } });
check(how === "rejected" && doc.code === 400 && /firmware/.test(doc.message),
  "classic shadow: reported firmware not a string: 400", doc);
[how, doc] = await ask(`${cfg}/update`, { state: { desired: 1 }, clientToken: "tok-9" });
check(how === "rejected" && doc.clientToken === "tok-9", "clientToken echoed on a rejection", doc);
[how, doc] = await ask(`${cfg}/get`, "");
check(how === "accepted" && doc.version === 3 && doc.state.reported.rate === 1 &&
  !doc.state.desired, "after the refusals the shadow is unchanged", doc);
[how, doc] = await ask(`${base}/get`, "not json");
check(how === "rejected" && doc.code === 400, "get with invalid JSON: 400", doc);

// the operator's side: list, read, change desired (the device hears the
// delta), a stale version refused, delete
let res = await api("GET", `/api/v1/devices/${thing}/shadows`);
check(res.status === 200 && res.body.items.some((x) => x.name === "config" && x.version === 3),
  "operator API lists the named shadows", res.body);
const delta = waitFor(dev, "message", (t) => t === `${cfg}/update/delta`, 8000);
res = await api("PATCH", `/api/v1/devices/${thing}/shadows/config`,
  { desired: { rate: 7 }, version: 3 });
check(res.status === 200 && res.body.version === 4 && res.body.state.delta.rate === 7,
  "operator changed desired with the version check", res.body);
const dm = await delta;
check(dm && JSON.parse(dm[1].toString()).state.rate === 7, "the device got update/delta",
  dm && dm[1].toString());
res = await api("PATCH", `/api/v1/devices/${thing}/shadows/config`,
  { desired: { rate: 8 }, version: 3 });
check(res.status === 409, "operator's stale version: 409", res);
res = await api("GET", `/api/v1/devices/${thing}/shadows/config`);
check(res.status === 200 && res.body.state.desired.rate === 7 && res.body.version === 4,
  "operator reads the shadow", res.body);
res = await api("PATCH", `/api/v1/devices/${thing}/shadows/bad name`, { desired: {} });
check(res.status === 400 || res.status === 404, "a malformed name refused", res.status);
res = await api("DELETE", `/api/v1/devices/${thing}/shadows/config`);
check(res.status === 200 && res.body.version === 4, "operator deleted it", res.body);
res = await api("GET", `/api/v1/devices/${thing}/shadows/config`);
check(res.status === 404, "gone: 404", res.status);
res = await api("GET", `/api/v1/devices/nobody-here/shadows`);
check(res.status === 404, "an unknown device: 404", res.status);

dev.end(true);
done();
