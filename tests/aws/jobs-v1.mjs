// aws-iot-device-sdk (v1) jobs against Motehub, unmodified, over mutual
// TLS: an operator creates jobs (rollouts of a JSON document) through the
// API; the SDK hears of them (startJobNotifications, notify-next), runs a
// handler per jobDocument.operation, and reports IN_PROGRESS, SUCCEEDED
// or FAILED; the operator API shows the outcome. Thing: MH_AWS_THING.
import awsIot from "aws-iot-device-sdk";
import { api, certFiles, check, deadline, done, env, sleep } from "./lib.mjs";

const thing = process.env.MH_AWS_THING;
deadline(100000);

// only this thing is targeted
const tag = await api("PATCH", `/api/v1/devices/${thing}/twin`, { tags: { jobs: thing } });
check(tag.status === 200, "thing tagged for the jobs", tag.status);

const jobs = awsIot.jobs({
  ...certFiles(thing),
  clientId: thing,
  host: env.host,
  port: env.port,
  protocol: "mqtts",
});
await new Promise((resolve) => jobs.on("connect", resolve));

const ran = [];
const finished = {};
function handler(outcome) {
  return (err, job) => {
    if (err || !job) return;
    ran.push({ id: job.id, operation: job.operation, document: job.document });
    job.inProgress({ step: "started" }, (e1) => {
      if (e1) return;
      const report = outcome === "succeeded" ? job.succeeded : job.failed;
      report({ result: outcome }, (e2) => {
        if (!e2) finished[job.id] = outcome;
      });
    });
  };
}
jobs.subscribeToJobs(thing, "reboot", handler("succeeded"));
jobs.subscribeToJobs(thing, "calibrate", handler("failed"));
await new Promise((resolve, reject) =>
  jobs.startJobNotifications(thing, (err) => (err ? reject(err) : resolve())));
check(true, "startJobNotifications subscribed and asked for the next job");

async function createJob(document) {
  return api("POST", "/api/v1/jobs", {
    document,
    target: { tags: { jobs: thing } },
    waves: [{ percent: 100 }],
    soakSeconds: 0,
    jobTimeoutSeconds: 120,
  });
}

async function waitRollout(id, pred, ms = 30000) {
  let last = null;
  for (const end = Date.now() + ms; Date.now() < end; await sleep(300)) {
    last = (await api("GET", `/api/v1/jobs/${id}`)).body;
    if (pred(last)) return last;
  }
  return last;
}

const one = await createJob({ operation: "reboot", delaySeconds: 1 });
check(one.status === 201 && one.body.document.operation === "reboot",
  "operator created a job with a document", one.body);
let r = await waitRollout(one.body.id, (x) => x.state === "completed");
check(ran.length === 1 && ran[0].id === one.body.id && ran[0].document.delaySeconds === 1,
  "the SDK ran the reboot handler with the job's document", ran);
check(finished[one.body.id] === "succeeded", "it reported IN_PROGRESS, then SUCCEEDED", finished);
check(r && r.state === "completed" && r.waves[0].succeeded === 1,
  "the rollout completed with one success", r);

const two = await createJob({ operation: "calibrate" });
check(two.status === 201, "a second job created", two.status);
r = await waitRollout(two.body.id, (x) => x.waves && x.waves[0].failed === 1);
check(finished[two.body.id] === "failed" && r && r.waves[0].failed === 1,
  "the calibrate handler reported FAILED and the rollout counts it", r);
check(ran.filter((x) => x.id === one.body.id).length === 1,
  "the first job was not run twice", ran);

const execs = await api("GET", `/api/v1/jobs/${one.body.id}/executions`);
check(execs.status === 200 && execs.body.items.length === 1 &&
  execs.body.items[0].awsStatus === "SUCCEEDED" &&
  execs.body.items[0].statusDetails.result === "succeeded",
  "the operator API lists the execution with its AWS status and details", execs.body);

jobs.end(true);
done();
