// aws-iot-device-sdk (v1) thingShadow against Motehub, unmodified, over
// mutual TLS: register, update, get, delta and foreignStateChange from an
// operator's change, a stale version rejected, delete; the twin seen
// through the operator API. Thing: MH_AWS_THING.
import awsIot from "aws-iot-device-sdk";
import { api, certFiles, check, deadline, done, env, waitFor } from "./lib.mjs";

const thing = process.env.MH_AWS_THING;
deadline(90000);

function client(clientId) {
  return awsIot.thingShadow({
    ...certFiles(thing),
    clientId,
    host: env.host,
    port: env.port,
    protocol: "mqtts",
    operationTimeout: 8000,
  });
}

async function registered(c, opts = {}) {
  await waitFor(c, "connect");
  return new Promise((resolve) => c.register(thing, opts, () => resolve()));
}

// An operation's outcome: [thingName, stat, clientToken, stateObject].
function outcome(c, token) {
  return Promise.race([
    waitFor(c, "status", (_n, _s, t) => t === token),
    waitFor(c, "timeout", (_n, t) => t === token).then((a) => a && [a[0], "timeout", a[1], null]),
  ]);
}

// One connection per thing: the broker takes the client id from the
// certificate (shared/spec/aws-iot-compat.md), as AWS does with a policy
// that pins iot:ClientId to the thing name.
const a = client(thing);
await registered(a);
check(true, "thingShadow connected and registered");

// update and get
let token = a.update(thing, { state: { reported: { temp: 21, mode: "eco" } } });
let st = await outcome(a, token);
check(st && st[1] === "accepted", "update of reported accepted", st);
check(st && st[3].state.reported.temp === 21 && typeof st[3].version === "number",
  "update/accepted carries the state and a version", st && st[3]);
token = a.get(thing);
st = await outcome(a, token);
check(st && st[1] === "accepted" && st[3].state.reported.mode === "eco",
  "get returns the reported state", st && st[3]);
check(st && typeof st[3].metadata.reported.temp.timestamp === "number" &&
  st[3].timestamp < 1e11, "metadata on every leaf, timestamps in seconds", st && st[3]);

// an operator's desired change: a delta, and a foreignStateChange (an update
// the SDK did not make)
const delta = waitFor(a, "delta", (_n, s) => s.state && s.state.led === "on");
const foreign = waitFor(a, "foreignStateChange", (_n, op, s) =>
  op === "update" && s.state && s.state.desired && s.state.desired.led === "on");
const patch = await api("PATCH", `/api/v1/devices/${thing}/twin`, { desired: { led: "on" } });
check(patch.status === 200, "operator patched desired through the API", patch);
const d = await delta;
check(d !== null, "delta from the operator's change reached the SDK", d && d[1]);
check((await foreign) !== null, "the operator's change seen as foreignStateChange");
token = a.update(thing, { state: { reported: { temp: 22, led: "on" } } });
st = await outcome(a, token);
check(st && st[1] === "accepted", "update carrying the version the SDK tracked accepted", st);
a.end(true);

// a client whose version is stale is refused with 409: it reads the shadow
// (and learns its version), then an operator changes the twin's tags (a new
// version the SDK hears nothing of: no delta, no desired change)
const c = client(thing);
await registered(c, { persistentSubscribe: false });
token = c.get(thing);
st = await outcome(c, token);
check(st && st[1] === "accepted", "a second session read the shadow", st);
await api("PATCH", `/api/v1/devices/${thing}/twin`, { tags: { site: "b" } });
token = c.update(thing, { state: { reported: { temp: 1 } } });
st = await outcome(c, token);
check(st && st[1] === "rejected" && st[3].code === 409,
  "update with a stale version rejected with 409", st && st[3]);
// as with AWS, a rejection carries no version: the device reads the shadow
// again, and its next update is accepted
token = c.get(thing);
await outcome(c, token);
token = c.update(thing, { state: { reported: { temp: 23 } } });
st = await outcome(c, token);
check(st && st[1] === "accepted", "after a get, the SDK's next update is accepted", st);

// the same twin through the operator API
const twin = await api("GET", `/api/v1/devices/${thing}/twin`);
check(twin.status === 200 && twin.body.state.reported.temp === 23 &&
  twin.body.state.desired.led === "on", "the operator API shows the SDK's reports", twin.body);

// delete
token = c.delete(thing);
st = await outcome(c, token);
check(st && st[1] === "accepted" && typeof st[3].version === "number",
  "delete accepted with a version", st && st[3]);
const after = await api("GET", `/api/v1/devices/${thing}/twin`);
check(after.status === 200 && Object.keys(after.body.state.reported).length === 0 &&
  after.body.version > twin.body.version, "delete cleared the state and kept counting versions",
  after.body);

c.end(true);
done();
