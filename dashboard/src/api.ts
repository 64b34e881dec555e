// The operator API, with the token kept in this browser's localStorage.

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

export function liveUrl(): string {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  return `${proto}://${location.host}/api/v1/live?access_token=${encodeURIComponent(getToken())}`;
}
