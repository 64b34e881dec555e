// aws-iot-device-sdk-v2 iotidentity (IotIdentityClientv2) over MQTT 5 or
// 3.1.1 (argv[2]) from a claim certificate: CreateKeysAndCertificate and
// CreateCertificateFromCsr, RegisterThing through an AWS-style template, the
// rejections AWS gives (bad parameters, a used token, an unknown template),
// a claim certificate refused a shadow; then each new certificate connects
// as its device, which the operator API shows with the template's tags and
// desired state. argv[3] "revoked": the certificate of the first device
// (revoked by the test meanwhile) can no longer connect.
import { iotidentity, iotshadow, mqtt5 } from "aws-iot-device-sdk-v2";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import { api, check, deadline, done, env, sleep } from "./lib.mjs";
import { connectV2, rrOptions } from "./v2-connect.mjs";

const protocol = process.argv[2] || "mqtt5";
const suffix = protocol === "mqtt5" ? "A" : "B";
const serial = (n) => `00C0FF${suffix}${n}`;
deadline(100000);

async function attempt(fn) {
  try {
    return { ok: true, value: await fn() };
  } catch (e) {
    return { ok: false, error: e, m: e.modeledError };
  }
}

function identity(conn) {
  return conn.protocol === "mqtt5"
    ? iotidentity.IotIdentityClientv2.newFromMqtt5(conn.client, rrOptions)
    : iotidentity.IotIdentityClientv2.newFromMqtt311(conn.client, rrOptions);
}

if (process.argv[3] === "revoked") {
  const thing = `sensor-${serial(1)}`;
  const r = await attempt(() => Promise.race([
    connectV2(protocol, thing).then((c) => c.stop().then(() => "connected")),
    sleep(8000).then(() => "timeout"),
  ]));
  check(!r.ok || r.value !== "connected", `over ${protocol}: the revoked certificate of ${thing} no longer connects`,
    r.ok ? r.value : r.error?.message);
  const other = await attempt(() => connectV2(protocol, `sensor-${serial(2)}`).then((c) => c.stop()));
  check(other.ok, `over ${protocol}: sensor-${serial(2)}'s certificate still does`, other.error?.message);
  done();
}

const template = {
  Parameters: {
    SerialNumber: { Type: "String", AllowedPattern: "[0-9A-F]{8}" },
    Model: { Type: "String", Default: "m1" },
  },
  Resources: {
    thing: {
      Type: "AWS::IoT::Thing",
      Properties: {
        ThingName: { "Fn::Join": ["", ["sensor-", { Ref: "SerialNumber" }]] },
        AttributePayload: { model: { Ref: "Model" }, line: "A" },
      },
    },
  },
  DeviceConfiguration: { Fallback: "{literal}", Interval: "30" },
  desired: { interval: 30 },
};
let put = await api("PUT", "/api/v1/provisioning-templates/factory", template);
check(put.status === 200 || put.status === 201, "operator put the AWS-style template", put.body);

const claim = await connectV2(protocol, "claim-factory");
const id = identity(claim);

// CreateKeysAndCertificate
let r = await attempt(() => id.createKeysAndCertificate({}));
const made = r.ok ? r.value : null;
check(made && /^[0-9a-f]{64}$/.test(made.certificateId) &&
  made.certificatePem.includes("BEGIN CERTIFICATE") && made.privateKey.includes("PRIVATE KEY") &&
  made.certificateOwnershipToken,
  `over ${protocol}: CreateKeysAndCertificate gave a certificate, its key and a token`,
  r.ok ? Object.keys(r.value) : r.error?.message);

// RegisterThing: bad parameters, an unknown template, then the real one
r = await attempt(() => id.registerThing({ templateName: "factory",
  certificateOwnershipToken: made.certificateOwnershipToken, parameters: { SerialNumber: "xyz" } }));
check(!r.ok && r.m?.statusCode === 400 && r.m?.errorCode === "InvalidParameters" &&
  /SerialNumber/.test(r.m?.errorMessage), "a serial not matching AllowedPattern: 400 InvalidParameters",
  r.m || r.error?.message);
r = await attempt(() => id.registerThing({ templateName: "no-such-template",
  certificateOwnershipToken: made.certificateOwnershipToken, parameters: { SerialNumber: serial(1) } }));
check(!r.ok && r.m?.statusCode === 404, "an unknown template: 404", r.m || r.error?.message);
r = await attempt(() => id.registerThing({ templateName: "factory",
  certificateOwnershipToken: made.certificateOwnershipToken, parameters: { SerialNumber: serial(1) } }));
check(r.ok && r.value.thingName === `sensor-${serial(1)}` &&
  r.value.deviceConfiguration?.Fallback === "{literal}" && r.value.deviceConfiguration?.Interval === "30",
  "RegisterThing named the device from the template and gave its deviceConfiguration",
  r.ok ? r.value : r.m || r.error?.message);
r = await attempt(() => id.registerThing({ templateName: "factory",
  certificateOwnershipToken: made.certificateOwnershipToken, parameters: { SerialNumber: serial(2) } }));
check(!r.ok && r.m?.statusCode === 400 && r.m?.errorCode === "InvalidCertificateOwnershipToken",
  "a used ownership token: 400", r.m || r.error?.message);
check((await api("GET", `/api/v1/devices/sensor-${serial(2)}`)).status === 404,
  "a refused registration made no device");

// CreateCertificateFromCsr: the key never leaves the device
const dir = fs.mkdtempSync(`${env.certs}/csr-`);
execFileSync("openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
  "-nodes", "-keyout", `${dir}/key.pem`, "-out", `${dir}/csr.pem`, "-subj", "/CN=whatever"]);
r = await attempt(() => id.createCertificateFromCsr({
  certificateSigningRequest: fs.readFileSync(`${dir}/csr.pem`, "utf8") }));
const fromCsr = r.ok ? r.value : null;
check(fromCsr && fromCsr.certificatePem.includes("BEGIN CERTIFICATE") && !fromCsr.privateKey,
  "CreateCertificateFromCsr signed the device's request", r.ok ? r.value : r.m || r.error?.message);
r = await attempt(() => id.createCertificateFromCsr({ certificateSigningRequest: "not a csr" }));
check(!r.ok && r.m?.statusCode === 400, "a malformed CSR: 400", r.m || r.error?.message);
r = await attempt(() => id.registerThing({ templateName: "factory",
  certificateOwnershipToken: fromCsr.certificateOwnershipToken,
  parameters: { SerialNumber: serial(2), Model: "m2" } }));
check(r.ok && r.value.thingName === `sensor-${serial(2)}`, "the CSR's certificate registered a second device",
  r.ok ? r.value : r.m || r.error?.message);

// a claim certificate may do nothing else
if (protocol === "mqtt5") {
  r = await attempt(() => claim.client.publish({ topicName: `$aws/things/sensor-${serial(1)}/shadow/get`,
    qos: mqtt5.QoS.AtLeastOnce, payload: "{}" }));
  const code = r.ok ? (r.value?.reasonCode ?? r.value?.packet?.reasonCode) : undefined;
  check(code === 135, "a claim certificate publishing to a shadow: PUBACK 0x87", r.ok ? r.value : r.error?.message);
}
id.close();
await claim.stop();

// the new certificates are their devices
fs.writeFileSync(`${env.certs}/sensor-${serial(1)}.crt`, made.certificatePem);
fs.writeFileSync(`${env.certs}/sensor-${serial(1)}.key`, made.privateKey, { mode: 0o600 });
fs.writeFileSync(`${env.certs}/sensor-${serial(2)}.crt`, fromCsr.certificatePem);
fs.copyFileSync(`${dir}/key.pem`, `${env.certs}/sensor-${serial(2)}.key`);
for (const n of [1, 2]) {
  const thing = `sensor-${serial(n)}`;
  const conn = await connectV2(protocol, thing);
  const shadow = conn.protocol === "mqtt5"
    ? iotshadow.IotShadowClientv2.newFromMqtt5(conn.client, rrOptions)
    : iotshadow.IotShadowClientv2.newFromMqtt311(conn.client, rrOptions);
  r = await attempt(() => shadow.updateShadow({ thingName: thing, state: { reported: { interval: 30, n } } }));
  check(r.ok && r.value.state.reported.n === n, `${thing} connected with its new certificate and reported`,
    r.ok ? r.value : r.m || r.error?.message);
  r = await attempt(() => shadow.getShadow({ thingName: `sensor-${serial(3 - n)}` }));
  check(!r.ok, `${thing} cannot read another device's shadow`, r.ok ? r.value : undefined);
  shadow.close();
  await conn.stop();
  const dev = await api("GET", `/api/v1/devices/${thing}`);
  const twin = await api("GET", `/api/v1/devices/${thing}/twin`);
  check(dev.status === 200 && dev.body.tags?.model === (n === 1 ? "m1" : "m2") && dev.body.tags?.line === "A",
    `${thing} registered with the template's tags`, dev.body);
  check(twin.body?.state?.desired?.interval === 30 && twin.body?.state?.reported?.n === n,
    `${thing}'s twin has the template's desired state and its report`, twin.body);
}
put = await api("GET", "/api/v1/provisioning-templates/factory");
check(put.status === 200 && put.body.devices >= 2, "the template counts the devices registered through it", put.body);
fs.writeFileSync(`${env.certs}/provisioned-${protocol}.txt`, made.certificateId + "\n");
done();
