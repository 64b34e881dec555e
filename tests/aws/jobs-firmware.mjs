// Motehub firmware taken by an AWS-SDK device: a firmware rollout is an AWS
// IoT job whose document Motehub builds (operation, version, url, size,
// sha256, signature). The v1 SDK's "install" handler downloads the image
// from the url, checks size, SHA-256 and the fleet's Ed25519 signature,
// reports SUCCEEDED and its new firmware in the classic shadow; the rollout
// completes. Thing: MH_AWS_THING.
import awsIot from "aws-iot-device-sdk";
import crypto from "node:crypto";
import { api, certFiles, check, deadline, done, env, sleep } from "./lib.mjs";

const thing = process.env.MH_AWS_THING;
const version = `7.${Date.now() % 100000}.0`;
deadline(100000);

const image = crypto.randomBytes(20000);
const up = await fetch(`${env.api}/api/v1/firmware?version=${version}&hardware=aws`, {
  method: "POST",
  headers: { Authorization: `Bearer ${env.token}`, "Content-Type": "application/octet-stream" },
  body: image,
});
check(up.status === 201, "firmware uploaded", up.status);
const key = await (await fetch(`${env.api}/api/v1/firmware/signing-key`, {
  headers: { Authorization: `Bearer ${env.token}` },
})).text();
await api("PATCH", `/api/v1/devices/${thing}/twin`, { tags: { fw: thing } });

const jobs = awsIot.jobs({ ...certFiles(thing), clientId: thing, host: env.host, port: env.port,
  protocol: "mqtts" });
await new Promise((resolve) => jobs.on("connect", resolve));
const seen = [];
jobs.subscribeToJobs(thing, "install", async (err, job) => {
  if (err || !job) return;
  const d = job.document;
  seen.push(d);
  job.inProgress({ step: "downloading" }, async () => {
    const body = Buffer.from(await (await fetch(d.url)).arrayBuffer());
    const sha = crypto.createHash("sha256").update(body).digest("hex");
    const signed = crypto.verify(null, body, key, Buffer.from(d.signature, "base64"));
    const good = body.length === d.size && sha === d.sha256 && signed;
    seen.push({ downloaded: body.length, shaOk: sha === d.sha256, signed });
    if (!good) return job.failed({ reason: "image check failed" });
    jobs.publish(`$aws/things/${thing}/shadow/update`,
      JSON.stringify({ state: { reported: { firmware: d.version } } }));
    job.succeeded({ installed: d.version });
  });
});
await new Promise((resolve, reject) =>
  jobs.startJobNotifications(thing, (e) => (e ? reject(e) : resolve())));

const ro = await api("POST", "/api/v1/rollouts", {
  firmware: version, target: { tags: { fw: thing } }, soakSeconds: 0,
});
check(ro.status === 201, "firmware rollout created", ro.body);
let r = null;
for (let i = 0; i < 120; i++, await sleep(250)) {
  r = (await api("GET", `/api/v1/rollouts/${ro.body.id}`)).body;
  if (r.state === "completed") break;
}
const doc = seen[0] || {};
check(doc.operation === "install" && doc.version === version && doc.size === image.length &&
  /^[0-9a-f]{64}$/.test(doc.sha256) && doc.url && doc.signature,
  "the job document carries version, url, size, sha256, signature", doc);
check(seen[1] && seen[1].shaOk && seen[1].signed && seen[1].downloaded === image.length,
  "the device downloaded the image and checked its hash and signature", seen[1]);
check(r && r.state === "completed" && r.waves[0].succeeded === 1,
  "the firmware rollout completed through the AWS job", r);
const twin = (await api("GET", `/api/v1/devices/${thing}/twin`)).body;
check(twin.state.reported.firmware === version, "the twin reports the new firmware",
  twin.state.reported);

jobs.end(true);
done();
