// The keystore blob (docs/encryption.md, "Keystore blob"; sdk/fabula_sdk/keystore.py):
//   "FBLK" 0x01 | master nonce (24) | master key sealed under the kek (48) | body nonce (24) | body sealed
// The body is canonical JSON {"format":"fabula-keystore","keys":{id:{"key","type"}},"version":1}.
import { concat, decodeUtf8, fromBase64, toBase64, utf8 } from "./bytes";
import { blake2bPersonal, DecryptionError, KEY_BYTES, NONCE_BYTES, open, randomBytes, seal, TAG_BYTES, type Sodium } from "./sodium";

export type ObjectType = "stories" | "storycontent" | "lorebooks" | "presets" | "images";
export const OBJECT_TYPES: ObjectType[] = ["stories", "storycontent", "lorebooks", "presets", "images"];

const HEADER = concat(utf8.encode("FBLK"), new Uint8Array([1]));
const MASTER_KEY_AD = concat(HEADER, utf8.encode("fabula/master-key"));
const BODY_AD = concat(HEADER, utf8.encode("fabula/keystore"));
const BODY_OFFSET = HEADER.length + NONCE_BYTES + KEY_BYTES + TAG_BYTES; // 77
const DERIVED_KEY_PERSONAL = utf8.encode("fabula/subkey/v1");
const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
const DERIVED_ID = /^([A-Za-z0-9_-]+)_(h(?:0|[1-9][0-9]*)|thumb)$/;

export class KeystoreError extends Error {
  name = "KeystoreError";
}

export function checkObjectId(id: string): string {
  if (!ID_PATTERN.test(id)) throw new Error(`object id must be 1-64 characters of A-Z, a-z, 0-9, '_' and '-', not ${JSON.stringify(id)}`);
  return id;
}

export function derivationParent(id: string): string | null {
  const match = DERIVED_ID.exec(id);
  return match ? match[1] : null;
}

/** The data key of derived object type/id (a history segment, a thumbnail) from its parent's. */
export function derivedKey(sodium: Sodium, parentKey: Uint8Array, type: ObjectType, id: string): Uint8Array {
  const message = concat(utf8.encode(type), new Uint8Array([0]), utf8.encode(id));
  return blake2bPersonal(sodium, message, parentKey, DERIVED_KEY_PERSONAL);
}

export function wrapMasterKey(sodium: Sodium, masterKey: Uint8Array, kek: Uint8Array, nonce?: Uint8Array): Uint8Array {
  const n = nonce ?? randomBytes(sodium, NONCE_BYTES);
  return concat(n, seal(sodium, kek, n, masterKey, MASTER_KEY_AD));
}

function checkHeader(blob: Uint8Array): void {
  if (blob.length < BODY_OFFSET + NONCE_BYTES + TAG_BYTES) throw new KeystoreError(`the keystore is ${blob.length} bytes, too short`);
  if (decodeUtf8(blob.subarray(0, 4)) !== "FBLK") throw new KeystoreError("not a Fabula keystore (bad magic)");
  if (blob[4] !== 1) throw new KeystoreError(`keystore format version ${blob[4]} is not supported (this editor reads 1)`);
}

export function unwrapMasterKey(sodium: Sodium, blob: Uint8Array, kek: Uint8Array): Uint8Array {
  checkHeader(blob);
  const wrapped = blob.subarray(HEADER.length, BODY_OFFSET);
  try {
    return open(sodium, kek, wrapped.subarray(0, NONCE_BYTES), wrapped.subarray(NONCE_BYTES), MASTER_KEY_AD, "keystore master key");
  } catch (error) {
    if (error instanceof DecryptionError) {
      throw new KeystoreError("the keystore's master key does not open with this password (wrong password, or tampered with)");
    }
    throw error;
  }
}

/** The same keystore with its master key wrapped under a new kek (a password change). */
export function rewrap(sodium: Sodium, blob: Uint8Array, oldKek: Uint8Array, newKek: Uint8Array, nonce?: Uint8Array): Uint8Array {
  const master = unwrapMasterKey(sodium, blob, oldKek);
  return concat(HEADER, wrapMasterKey(sodium, master, newKek, nonce), blob.subarray(BODY_OFFSET));
}

export interface KeyEntry {
  type: ObjectType;
  key: Uint8Array;
}

export class Keystore {
  constructor(
    readonly masterKey: Uint8Array,
    readonly wrappedMasterKey: Uint8Array,
    readonly entries: Map<string, KeyEntry> = new Map(),
  ) {}

  static create(sodium: Sodium, kek: Uint8Array): Keystore {
    const master = randomBytes(sodium, KEY_BYTES);
    return new Keystore(master, wrapMasterKey(sodium, master, kek));
  }

  /** Decrypt with the password's kek, or with a master key kept from an earlier unlock. */
  static open(sodium: Sodium, blob: Uint8Array, keys: { kek?: Uint8Array; masterKey?: Uint8Array }): Keystore {
    const master = keys.kek ? unwrapMasterKey(sodium, blob, keys.kek) : keys.masterKey;
    if (!master) throw new Error("give kek or masterKey");
    checkHeader(blob);
    let body: Uint8Array;
    try {
      body = open(sodium, master, blob.subarray(BODY_OFFSET, BODY_OFFSET + NONCE_BYTES), blob.subarray(BODY_OFFSET + NONCE_BYTES),
        BODY_AD, "keystore");
    } catch {
      throw new KeystoreError("the keystore does not open with this master key (another account's, or tampered with)");
    }
    return new Keystore(master, blob.slice(HEADER.length, BODY_OFFSET), parseBody(body));
  }

  copy(): Keystore {
    return new Keystore(this.masterKey, this.wrappedMasterKey, new Map(this.entries));
  }

  body(): Uint8Array {
    const keys: Record<string, { key: string; type: string }> = {};
    for (const id of [...this.entries.keys()].sort()) {
      const entry = this.entries.get(id)!;
      keys[id] = { key: toBase64(entry.key), type: entry.type };
    }
    return utf8.encode(JSON.stringify({ format: "fabula-keystore", keys, version: 1 }));
  }

  seal(sodium: Sodium, nonce?: Uint8Array): Uint8Array {
    const n = nonce ?? randomBytes(sodium, NONCE_BYTES);
    return concat(HEADER, this.wrappedMasterKey, n, seal(sodium, this.masterKey, n, this.body(), BODY_AD));
  }

  has(type: ObjectType, id: string): boolean {
    return this.entries.has(id) || this.parentEntry(type, id) !== null;
  }

  private parentEntry(type: ObjectType, id: string): KeyEntry | null {
    const parent = derivationParent(id);
    const entry = parent === null ? undefined : this.entries.get(parent);
    return entry && entry.type === type ? entry : null;
  }

  keyFor(sodium: Sodium, type: ObjectType, id: string): Uint8Array {
    const entry = this.entries.get(id);
    if (!entry) {
      const parent = this.parentEntry(type, id);
      if (parent) return derivedKey(sodium, parent.key, type, id);
      throw new KeystoreError(`the keystore holds no key for ${type}/${id}`);
    }
    if (entry.type !== type) throw new KeystoreError(`the keystore's key for id ${id} belongs to a ${entry.type} object, not ${type}`);
    return entry.key;
  }

  /** A new random data key for type/id (ids are unique across types). */
  add(sodium: Sodium, type: ObjectType, id: string): Uint8Array {
    checkObjectId(id);
    const existing = this.entries.get(id);
    if (existing) {
      if (existing.type !== type) throw new KeystoreError(`id ${id} is already used by a ${existing.type} object`);
      return existing.key;
    }
    const key = randomBytes(sodium, KEY_BYTES);
    this.entries.set(id, { type, key });
    return key;
  }
}

export function parseBody(body: Uint8Array): Map<string, KeyEntry> {
  let data: any;
  try {
    data = JSON.parse(decodeUtf8(body));
  } catch (error) {
    throw new KeystoreError(`the keystore body is not UTF-8 JSON (${error})`);
  }
  if (typeof data !== "object" || data === null || data.format !== "fabula-keystore") {
    throw new KeystoreError('the keystore body must be a JSON object with "format": "fabula-keystore"');
  }
  if (data.version !== 1) throw new KeystoreError(`keystore body version ${JSON.stringify(data.version)} is not supported`);
  if (typeof data.keys !== "object" || data.keys === null) throw new KeystoreError('the keystore body\'s "keys" must be an object');
  const entries = new Map<string, KeyEntry>();
  for (const [id, entry] of Object.entries<any>(data.keys)) {
    const where = `keystore keys[${JSON.stringify(id)}]`;
    if (!ID_PATTERN.test(id) || typeof entry !== "object" || entry === null) throw new KeystoreError(`${where}: malformed entry`);
    if (!OBJECT_TYPES.includes(entry.type)) throw new KeystoreError(`${where}: malformed type`);
    let key: Uint8Array;
    try {
      key = fromBase64(String(entry.key ?? ""));
    } catch {
      throw new KeystoreError(`${where}: malformed key`);
    }
    if (key.length !== KEY_BYTES) throw new KeystoreError(`${where}: key must be ${KEY_BYTES} bytes, not ${key.length}`);
    entries.set(id, { type: entry.type, key });
  }
  return entries;
}
