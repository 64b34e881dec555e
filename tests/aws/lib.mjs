// What the SDK scenarios share: the environment tests/test_aws.c sets, the
// operator API, and checks that print "# ok - ..." or "# FAIL - ..." and
// make the process exit 1 at the end when any failed.
import fs from "node:fs";

export const env = {
  host: "127.0.0.1",
  port: Number(process.env.MH_AWS_PORT),
  certs: process.env.MH_AWS_CERTS,
  api: `http://127.0.0.1:${process.env.MH_API_PORT}`,
  token: process.env.MH_API_TOKEN,
};

export function certFiles(id) {
  return {
    caPath: `${env.certs}/ca.crt`,
    certPath: `${env.certs}/${id}.crt`,
    keyPath: `${env.certs}/${id}.key`,
  };
}

export function pem(id) {
  return {
    ca: fs.readFileSync(`${env.certs}/ca.crt`, "utf8"),
    cert: fs.readFileSync(`${env.certs}/${id}.crt`, "utf8"),
    key: fs.readFileSync(`${env.certs}/${id}.key`, "utf8"),
  };
}

let failed = 0;
export function check(ok, what, detail) {
  if (ok) console.log(`# ok - ${what}`);
  else {
    failed++;
    console.log(`# FAIL - ${what}${detail === undefined ? "" : ": " + JSON.stringify(detail)}`);
  }
  return ok;
}

export function done() {
  console.log(failed ? `# ${failed} check(s) failed` : "# all checks passed");
  process.exit(failed ? 1 : 0);
}

export async function api(method, path, body, headers = {}) {
  const r = await fetch(env.api + path, {
    method,
    headers: {
      Authorization: `Bearer ${env.token}`,
      ...(body ? { "Content-Type": "application/json" } : {}),
      ...headers,
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

// Resolves with the first `event` of `emitter` whose arguments satisfy
// `pred`, or with null after `ms`.
export function waitFor(emitter, event, pred = () => true, ms = 10000) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      emitter.removeListener(event, on);
      resolve(null);
    }, ms);
    function on(...args) {
      if (!pred(...args)) return;
      clearTimeout(timer);
      emitter.removeListener(event, on);
      resolve(args);
    }
    emitter.on(event, on);
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Gives up after `ms` in all: a hung SDK fails the scenario, not the suite.
export function deadline(ms) {
  setTimeout(() => {
    check(false, `scenario finished within ${ms / 1000} s`);
    done();
  }, ms).unref();
}
