// aws-iot-device-sdk-v2 iotshadow (IotShadowClientv2, request-response
// with the SDK's wildcard reply filters) over MQTT 5 or 3.1.1 (argv[2]):
// a named shadow's whole life, its delta stream, a stale version refused,
// and the classic shadow beside it.
import { iotshadow } from "aws-iot-device-sdk-v2";
import { check, deadline, done, sleep } from "./lib.mjs";
import { connectV2, rrOptions } from "./v2-connect.mjs";

const protocol = process.argv[2] || "mqtt5";
const thing = process.env.MH_AWS_THING;
const shadowName = `settings-${protocol}`;
deadline(90000);

const conn = await connectV2(protocol, thing);
check(true, `connected over ${protocol} with the thing's certificate`);
const shadow = protocol === "mqtt5"
  ? iotshadow.IotShadowClientv2.newFromMqtt5(conn.client, rrOptions)
  : iotshadow.IotShadowClientv2.newFromMqtt311(conn.client, rrOptions);

async function attempt(what, fn) {
  try {
    return { ok: true, value: await fn() };
  } catch (e) {
    return { ok: false, error: e, code: e.modeledError ? e.modeledError.code : undefined };
  }
}

let r = await attempt("get", () => shadow.getNamedShadow({ thingName: thing, shadowName }));
check(!r.ok && r.code === 404, "get of a named shadow not made yet: 404", r.code ?? r.error?.message);

const deltas = [];
const stream = shadow.createNamedShadowDeltaUpdatedStream({ thingName: thing, shadowName });
stream.on("incomingPublish", (ev) => deltas.push(ev.message));
const subscribed = new Promise((resolve) => stream.on("subscriptionStatus", resolve));
stream.open();
await subscribed;

r = await attempt("update", () => shadow.updateNamedShadow({
  thingName: thing, shadowName, state: { desired: { interval: 30, mode: "fast" } },
}));
check(r.ok && r.value.version === 1 && r.value.state.desired.interval === 30,
  "update of desired accepted, version 1", r.ok ? r.value : r.error?.message);
for (let i = 0; i < 50 && deltas.length === 0; i++) await sleep(100);
check(deltas.length >= 1 && deltas[0].state.interval === 30,
  "delta stream delivered the desired keys not reported", deltas[0]);

r = await attempt("update", () => shadow.updateNamedShadow({
  thingName: thing, shadowName, version: 1,
  state: { reported: { interval: 30, mode: "fast" } },
}));
check(r.ok && r.value.version === 2, "report with the right version accepted, version 2",
  r.ok ? r.value : r.error?.message);
r = await attempt("get", () => shadow.getNamedShadow({ thingName: thing, shadowName }));
check(r.ok && r.value.version === 2 && r.value.state.reported.mode === "fast" &&
  !r.value.state.delta, "get: reported matches desired, no delta", r.ok ? r.value : r.error);
r = await attempt("update", () => shadow.updateNamedShadow({
  thingName: thing, shadowName, version: 1, state: { reported: { mode: "slow" } },
}));
check(!r.ok && r.code === 409, "stale version refused with 409", r.code ?? r.value);

r = await attempt("update", () => shadow.updateShadow({
  thingName: thing, state: { reported: { fw_channel: protocol } },
}));
check(r.ok && r.value.state.reported.fw_channel === protocol,
  "classic shadow updated beside it", r.ok ? r.value : r.error?.message);
r = await attempt("get", () => shadow.getShadow({ thingName: thing }));
check(r.ok && r.value.state.reported.fw_channel === protocol && !r.value.state.reported.interval,
  "classic shadow holds only its own keys", r.ok ? r.value : r.error?.message);

r = await attempt("delete", () => shadow.deleteNamedShadow({ thingName: thing, shadowName }));
check(r.ok && r.value.version === 2, "named shadow deleted", r.ok ? r.value : r.error?.message);
r = await attempt("get", () => shadow.getNamedShadow({ thingName: thing, shadowName }));
check(!r.ok && r.code === 404, "deleted: 404", r.code);

stream.close();
shadow.close();
await conn.stop();
done();
