// One encrypted object (docs/encryption.md, "Object blob"; sdk/fabula_sdk/envelope.py):
//   "FBLO" 0x01 | compression (0 none, 1 zlib) | revision u64 BE | nonce (24) | sealed payload
// associated data = header (14 bytes) | "fabula/object" 0x00 | type 0x00 | id.
// zlib is the browser's own CompressionStream("deflate") (RFC 1950, as Python's zlib).
import { concat, utf8 } from "./bytes";
import { DecryptionError, NONCE_BYTES, open, randomBytes, seal, TAG_BYTES, type Sodium } from "./sodium";
import type { ObjectType } from "./keystore";

export const HEADER_BYTES = 14;
const OVERHEAD = HEADER_BYTES + NONCE_BYTES + TAG_BYTES;
/** Readers refuse to inflate more than this (the SDK's bound). */
export const MAX_PLAINTEXT_BYTES = 256 * 1024 * 1024;

export interface OpenedObject {
  plaintext: Uint8Array;
  revision: bigint;
  compression: number;
}

export function header(compression: number, revision: bigint): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES);
  out.set(utf8.encode("FBLO"));
  out[4] = 1;
  out[5] = compression;
  new DataView(out.buffer).setBigUint64(6, revision);
  return out;
}

export function associatedData(head: Uint8Array, type: ObjectType, id: string): Uint8Array {
  return concat(head, utf8.encode("fabula/object"), new Uint8Array([0]), utf8.encode(type), new Uint8Array([0]), utf8.encode(id));
}

/** The blob for an already-compressed payload (the vectors pin this layer). */
export function sealPayload(sodium: Sodium, key: Uint8Array, type: ObjectType, id: string, payload: Uint8Array,
                            compression: number, revision: bigint, nonce?: Uint8Array): Uint8Array {
  if (compression !== 0 && compression !== 1) throw new Error(`compression must be 0 or 1, not ${compression}`);
  if (revision < 0n || revision > 0xffffffffffffffffn) throw new Error(`revision out of range: ${revision}`);
  const head = header(compression, revision);
  const n = nonce ?? randomBytes(sodium, NONCE_BYTES);
  return concat(head, n, seal(sodium, key, n, payload, associatedData(head, type, id)));
}

async function pipe(data: Uint8Array, stream: CompressionStream | DecompressionStream, limit: number): Promise<Uint8Array> {
  const writer = stream.writable.getWriter();
  const written = writer.write(data as BufferSource).then(() => writer.close());
  const reader = stream.readable.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
    if (total > limit) {
      await reader.cancel();
      throw new DecryptionError(`content inflates beyond ${limit} bytes`);
    }
    chunks.push(value);
  }
  await written;
  return concat(...chunks);
}

export function deflate(data: Uint8Array): Promise<Uint8Array> {
  return pipe(data, new CompressionStream("deflate"), Number.MAX_SAFE_INTEGER);
}

export async function inflate(data: Uint8Array, what: string): Promise<Uint8Array> {
  try {
    return await pipe(data, new DecompressionStream("deflate"), MAX_PLAINTEXT_BYTES);
  } catch (error) {
    if (error instanceof DecryptionError) throw new DecryptionError(`${what}: ${error.message}`);
    throw new DecryptionError(`${what}: authentic but its compressed content is corrupt (${error})`);
  }
}

/** Compress when it makes the object smaller, then encrypt. */
export async function sealObject(sodium: Sodium, key: Uint8Array, type: ObjectType, id: string, plaintext: Uint8Array,
                                 revision: bigint, compress = true): Promise<Uint8Array> {
  let payload = plaintext;
  let compression = 0;
  if (compress) {
    const packed = await deflate(plaintext);
    if (packed.length < plaintext.length) {
      payload = packed;
      compression = 1;
    }
  }
  return sealPayload(sodium, key, type, id, payload, compression, revision);
}

export async function openObject(sodium: Sodium, key: Uint8Array, type: ObjectType, id: string, blob: Uint8Array): Promise<OpenedObject> {
  const what = `${type}/${id}`;
  if (blob.length < OVERHEAD) throw new DecryptionError(`${what}: ${blob.length} bytes is too short to be an encrypted object`);
  if (blob[0] !== 0x46 || blob[1] !== 0x42 || blob[2] !== 0x4c || blob[3] !== 0x4f) {
    throw new DecryptionError(`${what}: not an encrypted Fabula object`);
  }
  if (blob[4] !== 1) throw new DecryptionError(`${what}: format version ${blob[4]} is not supported (this editor reads 1)`);
  const head = blob.slice(0, HEADER_BYTES);
  const compression = blob[5];
  const revision = new DataView(head.buffer).getBigUint64(6);
  const payload = open(sodium, key, blob.subarray(HEADER_BYTES, HEADER_BYTES + NONCE_BYTES), blob.subarray(HEADER_BYTES + NONCE_BYTES),
    associatedData(head, type, id), what);
  let plaintext: Uint8Array;
  if (compression === 1) plaintext = await inflate(payload, what);
  else if (compression === 0) plaintext = payload;
  else throw new DecryptionError(`${what}: unknown compression ${compression}`);
  return { plaintext, revision, compression };
}
