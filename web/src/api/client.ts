// The gateway's HTTP API as the editor uses it (the same calls as sdk/fabula_sdk/http_transport.py).
// Everything sent here is either ciphertext, a derived auth key, or the context of a generation.
import { fromBase64, toBase64 } from "../crypto/bytes";
import type { KdfParams } from "../crypto/kdf";
import type { ObjectType } from "../crypto/keystore";

export class ApiError extends Error {
  name = "ApiError";
  constructor(readonly status: number, readonly code: string, message: string, readonly field: string | null = null) {
    super(message);
  }
}

export class ConflictError extends ApiError {
  name = "ConflictError";
}

export interface Session {
  token: string;
  expiresAt: string;
  userId: string;
}

export interface ObjectMeta {
  id: string;
  type: ObjectType;
  size: number;
  changeIndex: number;
  createdAt: string;
  updatedAt: string;
}

function meta(body: any): ObjectMeta {
  return { id: body.id, type: body.type, size: body.size, changeIndex: body.change_index,
    createdAt: body.created_at, updatedAt: body.updated_at };
}

function session(body: any): Session {
  return { token: body.token, expiresAt: body.expires_at, userId: body.user_id };
}

export async function errorFrom(response: Response): Promise<ApiError> {
  let code = "", message = `${response.status} ${response.statusText}`, field: string | null = null;
  try {
    const body = await response.json();
    const error = body.error ?? body;
    code = error.code ?? "";
    message = error.message ?? error.detail ?? message;
    field = error.field ?? null;
  } catch {
    // not a JSON error body: the status line says enough
  }
  const Kind = response.status === 409 ? ConflictError : ApiError;
  return new Kind(response.status, code, String(message), field);
}

export class Api {
  token: string | null = null;

  constructor(readonly base: string = "") {}

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return this.token ? { Authorization: `Bearer ${this.token}`, ...extra } : extra;
  }

  async request(method: string, path: string, init: { json?: unknown; body?: BodyInit; headers?: Record<string, string>;
                signal?: AbortSignal } = {}): Promise<Response> {
    const headers = this.headers(init.headers);
    let body = init.body;
    if (init.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(init.json);
    }
    const response = await fetch(this.base + path, { method, headers, body, signal: init.signal });
    if (!response.ok) throw await errorFrom(response);
    return response;
  }

  private async json(method: string, path: string, json?: unknown): Promise<any> {
    const response = await this.request(method, path, { json });
    return response.status === 204 ? null : response.json();
  }

  async salt(username: string): Promise<{ salt: Uint8Array; kdf: KdfParams }> {
    const body = await this.json("POST", "/user/salt", { username });
    return { salt: fromBase64(body.salt), kdf: { opslimit: body.kdf.opslimit, memlimit: body.kdf.memlimit } };
  }

  async register(username: string, salt: Uint8Array, kdf: KdfParams, authKey: Uint8Array, keystore: Uint8Array): Promise<Session> {
    return session(await this.json("POST", "/user/register", {
      username, salt: toBase64(salt), kdf, auth_key: toBase64(authKey), keystore: toBase64(keystore) }));
  }

  async login(username: string, authKey: Uint8Array): Promise<Session> {
    return session(await this.json("POST", "/user/login", { username, auth_key: toBase64(authKey) }));
  }

  async logout(): Promise<void> {
    await this.json("POST", "/user/logout");
  }

  async me(): Promise<{ userId: string; username: string }> {
    const body = await this.json("GET", "/user/me");
    return { userId: body.user_id, username: body.username };
  }

  async changePassword(oldAuthKey: Uint8Array, newSalt: Uint8Array, newKdf: KdfParams, newAuthKey: Uint8Array,
                       keystore: Uint8Array, expectedKeystoreChangeIndex: number): Promise<Session & { keystoreChangeIndex: number }> {
    const body = await this.json("POST", "/user/change-password", {
      old_auth_key: toBase64(oldAuthKey), new_salt: toBase64(newSalt), new_kdf: newKdf, new_auth_key: toBase64(newAuthKey),
      keystore: toBase64(keystore), expected_keystore_change_index: expectedKeystoreChangeIndex });
    return { ...session(body), keystoreChangeIndex: body.keystore_change_index };
  }

  async getKeystore(): Promise<{ blob: Uint8Array; changeIndex: number }> {
    const body = await this.json("GET", "/user/keystore");
    return { blob: fromBase64(body.keystore), changeIndex: body.change_index };
  }

  async putKeystore(blob: Uint8Array, expectedChangeIndex: number): Promise<number> {
    const body = await this.json("PUT", "/user/keystore", { keystore: toBase64(blob), expected_change_index: expectedChangeIndex });
    return body.change_index;
  }

  async listObjects(type: ObjectType): Promise<ObjectMeta[]> {
    const out: ObjectMeta[] = [];
    let token = "";
    do {
      const query = new URLSearchParams({ page_size: "500", ...(token ? { page_token: token } : {}) });
      const body = await this.json("GET", `/user/objects/${type}?${query}`);
      out.push(...body.objects.map(meta));
      token = body.next_page_token;
    } while (token);
    return out;
  }

  async getObject(type: ObjectType, id: string): Promise<{ meta: ObjectMeta; data: Uint8Array }> {
    const response = await this.request("GET", `/user/objects/${type}/${encodeURIComponent(id)}/data`);
    const h = response.headers;
    return {
      meta: { id, type, size: Number(h.get("content-length") ?? 0), changeIndex: Number(h.get("x-fabula-change-index")),
        createdAt: h.get("x-fabula-created-at") ?? "", updatedAt: h.get("x-fabula-updated-at") ?? "" },
      data: new Uint8Array(await response.arrayBuffer()),
    };
  }

  async putObject(type: ObjectType, id: string, data: Uint8Array, expectedChangeIndex: number): Promise<ObjectMeta> {
    const query = new URLSearchParams({ expected_change_index: String(expectedChangeIndex) });
    const response = await this.request("PUT", `/user/objects/${type}/${encodeURIComponent(id)}/data?${query}`,
      { body: data as BodyInit, headers: { "Content-Type": "application/octet-stream" } });
    return meta(await response.json());
  }

  async deleteObject(type: ObjectType, id: string, expectedChangeIndex?: number): Promise<void> {
    const query = expectedChangeIndex === undefined ? "" : `?expected_change_index=${expectedChangeIndex}`;
    await this.request("DELETE", `/user/objects/${type}/${encodeURIComponent(id)}${query}`);
  }
}
