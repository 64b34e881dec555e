// The operator API, with the token kept in this browser's localStorage.
//
// Every request goes through `call`, whose path and method are checked at
// build time against the OpenAPI document the API serves
// (services/fleet-stats/openapi.json, turned into src/api-schema.d.ts by
// openapi-typescript in `npm run build`): a path or method the document
// does not have, or a missing path parameter, fails the build, so the
// dashboard and the API cannot drift apart. (Response bodies are not typed
// yet: the document does not describe them.)
import type { paths } from "./api-schema";

export class ApiError extends Error {
  constructor(public status: number, public code: string, message: string) {
    super(message);
  }
}

export function getToken(): string {
  return localStorage.getItem("motehub.token") ?? "";
}

export function setToken(t: string) {
  if (t) localStorage.setItem("motehub.token", t);
  else localStorage.removeItem("motehub.token");
}

export async function api<T = any>(
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<{ data: T; etag: string | null }> {
  const init: RequestInit = {
    method,
    headers: { Authorization: `Bearer ${getToken()}`, ...headers },
  };
  if (body instanceof Blob || body instanceof ArrayBuffer) {
    init.body = body as BodyInit;
    (init.headers as Record<string, string>)["Content-Type"] = "application/octet-stream";
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    (init.headers as Record<string, string>)["Content-Type"] = "application/json";
  }
  const r = await fetch(path, init);
  const text = await r.text();
  let data: any = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!r.ok) {
    const e = data?.error ?? {};
    throw new ApiError(r.status, e.code ?? "error", e.message ?? `HTTP ${r.status}`);
  }
  return { data, etag: r.headers.get("ETag") };
}

type Method = "get" | "post" | "patch" | "delete";
/** The document's paths that have operation `M`. */
export type PathOf<M extends Method> = {
  [P in keyof paths]: paths[P] extends Record<M, unknown> ? P : never;
}[keyof paths];
/** The path parameters ({id}, {name}, ...) an operation needs. */
type PathParams<M extends Method, P extends PathOf<M>> = paths[P][M] extends { parameters: { path: infer T } }
  ? T extends Record<string, unknown> ? T : never
  : never;

export type CallOptions<M extends Method, P extends PathOf<M>> = {
  query?: Record<string, string | number | string[] | undefined>;
  body?: unknown;
  headers?: Record<string, string>;
} & ([PathParams<M, P>] extends [never] ? { path?: undefined } : { path: PathParams<M, P> });

export async function call<M extends Method, P extends PathOf<M>>(
  method: M,
  path: P,
  ...[opts]: [PathParams<M, P>] extends [never] ? [CallOptions<M, P>?] : [CallOptions<M, P>]
): Promise<{ data: any; etag: string | null }> {
  const o = (opts ?? {}) as { path?: Record<string, string>; query?: Record<string, string | number | string[] | undefined>; body?: unknown; headers?: Record<string, string> };
  let url = String(path).replace(/\{(\w+)\}/g, (_, k) => encodeURIComponent(String(o.path?.[k] ?? "")));
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(o.query ?? {}))
    for (const one of Array.isArray(v) ? v : [v]) if (one !== undefined && one !== "") q.append(k, String(one));
  if ([...q].length) url += `?${q}`;
  return api(method.toUpperCase(), url, o.body, o.headers ?? {});
}

export function liveUrl(): string {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  return `${proto}://${location.host}/api/v1/live?access_token=${encodeURIComponent(getToken())}`;
}
