// aws-iot-device-sdk-v2 iotjobs (IotJobsClientv2) over MQTT 5 or 3.1.1
// (argv[2]): a job's whole life — notified by notify-next, started with a
// step timeout, a stale expectedVersion refused (VersionMismatch), finished,
// a transition AWS refuses (InvalidStateTransition), described, and gone
// from the pending list; the operator API sees it succeed.
import { iotjobs } from "aws-iot-device-sdk-v2";
import { api, check, deadline, done, sleep } from "./lib.mjs";
import { connectV2, rrOptions } from "./v2-connect.mjs";

const protocol = process.argv[2] || "mqtt5";
const thing = process.env.MH_AWS_THING;
deadline(100000);

async function attempt(fn) {
  try {
    return { ok: true, value: await fn() };
  } catch (e) {
    return { ok: false, error: e, code: e.modeledError ? e.modeledError.code : undefined };
  }
}

await api("PATCH", `/api/v1/devices/${thing}/twin`, { tags: { jobs: `${thing}-${protocol}` } });
const conn = await connectV2(protocol, thing);
const jobs = protocol === "mqtt5"
  ? iotjobs.IotJobsClientv2.newFromMqtt5(conn.client, rrOptions)
  : iotjobs.IotJobsClientv2.newFromMqtt311(conn.client, rrOptions);

const nexts = [];
const stream = jobs.createNextJobExecutionChangedStream({ thingName: thing });
stream.on("incomingPublish", (ev) => nexts.push(ev.message));
const subscribed = new Promise((resolve) => stream.on("subscriptionStatus", resolve));
stream.open();
await subscribed;

let r = await attempt(() => jobs.getPendingJobExecutions({ thingName: thing }));
check(r.ok && r.value.queuedJobs.length === 0 && r.value.inProgressJobs.length === 0,
  `over ${protocol}: no pending jobs yet`, r.ok ? r.value : r.error?.message);

const created = await api("POST", "/api/v1/jobs", {
  document: { operation: "rotate-logs", keep: 3 },
  target: { tags: { jobs: `${thing}-${protocol}` } },
  soakSeconds: 0,
});
check(created.status === 201, "operator created the job", created.body);
const jobId = created.body.id;

for (let i = 0; i < 150 && !nexts.some((n) => n.execution && n.execution.jobId === jobId); i++)
  await sleep(100);
const next = nexts.find((n) => n.execution && n.execution.jobId === jobId);
check(next && next.execution.status === "QUEUED" && next.execution.jobDocument.keep === 3,
  "notify-next brought the queued execution with its document", nexts);

r = await attempt(() => jobs.startNextPendingJobExecution({
  thingName: thing, stepTimeoutInMinutes: 5, statusDetails: { step: "download" },
}));
check(r.ok && r.value.execution.jobId === jobId && r.value.execution.status === "IN_PROGRESS" &&
  r.value.execution.versionNumber === 2, "start-next moved it to IN_PROGRESS, version 2",
  r.ok ? r.value : r.error?.message);

r = await attempt(() => jobs.updateJobExecution({
  thingName: thing, jobId, status: "SUCCEEDED", expectedVersion: 1,
}));
check(!r.ok && r.code === "VersionMismatch", "a stale expectedVersion: VersionMismatch",
  r.code ?? r.value);

r = await attempt(() => jobs.updateJobExecution({
  thingName: thing, jobId, status: "SUCCEEDED", expectedVersion: 2,
  statusDetails: { result: "ok" }, includeJobExecutionState: true,
}));
check(r.ok && r.value.executionState.status === "SUCCEEDED" &&
  r.value.executionState.versionNumber === 3, "update to SUCCEEDED accepted, version 3",
  r.ok ? r.value : r.error?.message);

r = await attempt(() => jobs.updateJobExecution({ thingName: thing, jobId, status: "IN_PROGRESS" }));
check(!r.ok && r.code === "InvalidStateTransition",
  "SUCCEEDED back to IN_PROGRESS: InvalidStateTransition", r.code ?? r.value);

r = await attempt(() => jobs.describeJobExecution({ thingName: thing, jobId }));
check(r.ok && r.value.execution.status === "SUCCEEDED" &&
  r.value.execution.statusDetails.result === "ok", "describe shows SUCCEEDED and the details",
  r.ok ? r.value : r.error?.message);
r = await attempt(() => jobs.describeJobExecution({ thingName: thing, jobId: "no-such-job" }));
check(!r.ok && r.code === "ResourceNotFound", "describe of an unknown job: ResourceNotFound",
  r.code ?? r.value);
r = await attempt(() => jobs.getPendingJobExecutions({ thingName: thing }));
check(r.ok && r.value.queuedJobs.length === 0 && r.value.inProgressJobs.length === 0,
  "nothing pending afterwards", r.ok ? r.value : r.error?.message);

let job = null;
for (let i = 0; i < 60; i++, await sleep(250)) {
  job = (await api("GET", `/api/v1/jobs/${jobId}`)).body;
  if (job.state === "completed") break;
}
check(job && job.state === "completed" && job.waves[0].succeeded === 1,
  "the operator API shows the job completed", job);

stream.close();
jobs.close();
await conn.stop();
done();
