// The signed-in account: the API, the keystore (kept decrypted in memory only) and the revisions
// this browser has seen. Every object goes through here, encrypted on the way out and checked on
// the way in (docs/encryption.md, sections 3-4), so the screens only see plaintext documents.
import { decodeUtf8, utf8 } from "../crypto/bytes";
import { openObject, sealObject } from "../crypto/envelope";
import { Keystore, type ObjectType } from "../crypto/keystore";
import { DecryptionError, type Sodium } from "../crypto/sodium";
import { Api, ConflictError, type ObjectMeta } from "./client";

export class ReplayError extends DecryptionError {
  name = "ReplayError";
}

export interface Stored {
  plaintext: Uint8Array;
  changeIndex: number;
}

/** How often a keystore write that meets another device's write re-reads and tries again. */
const KEYSTORE_ATTEMPTS = 8;

export class Vault {
  private seen = new Map<string, bigint>();

  constructor(readonly api: Api, readonly sodium: Sodium, public keystore: Keystore, public keystoreChangeIndex: number,
              readonly username: string) {}

  async get(type: ObjectType, id: string): Promise<Stored> {
    const { meta, data } = await this.api.getObject(type, id);
    const opened = await openObject(this.sodium, this.keystore.keyFor(this.sodium, type, id), type, id, data);
    const key = `${type}/${id}`;
    const seen = this.seen.get(key) ?? 0n;
    if (opened.revision < seen) {
      throw new ReplayError(`${key}: the server sent revision ${opened.revision}, older than revision ${seen} this browser has seen`);
    }
    this.seen.set(key, opened.revision);
    return { plaintext: opened.plaintext, changeIndex: meta.changeIndex };
  }

  async getText(type: ObjectType, id: string): Promise<{ text: string; changeIndex: number }> {
    const stored = await this.get(type, id);
    return { text: decodeUtf8(stored.plaintext), changeIndex: stored.changeIndex };
  }

  /** Store `plaintext` as type/id under `expectedChangeIndex` (0 creates); the data key must exist. */
  async put(type: ObjectType, id: string, plaintext: Uint8Array | string, expectedChangeIndex: number, compress = true): Promise<ObjectMeta> {
    const bytes = typeof plaintext === "string" ? utf8.encode(plaintext) : plaintext;
    const key = `${type}/${id}`;
    const seen = this.seen.get(key) ?? 0n;
    const expected = BigInt(expectedChangeIndex);
    const revision = (seen > expected ? seen : expected) + 1n;
    const blob = await sealObject(this.sodium, this.keystore.keyFor(this.sodium, type, id), type, id, bytes, revision, compress);
    const meta = await this.api.putObject(type, id, blob, expectedChangeIndex);
    this.seen.set(key, revision);
    return meta;
  }

  async delete(type: ObjectType, id: string, expectedChangeIndex?: number): Promise<void> {
    await this.api.deleteObject(type, id, expectedChangeIndex);
  }

  /** Make sure the keystore holds data keys for these objects, stored before any object is written
   * (a key before its object); another device's keystore write is merged, not overwritten. */
  async ensureKeys(wanted: { type: ObjectType; id: string }[]): Promise<void> {
    for (let attempt = 0; attempt < KEYSTORE_ATTEMPTS; attempt++) {
      const missing = wanted.filter((w) => !this.keystore.has(w.type, w.id));
      if (!missing.length) return;
      const next = this.keystore.copy();
      for (const w of missing) next.add(this.sodium, w.type, w.id);
      try {
        this.keystoreChangeIndex = await this.api.putKeystore(next.seal(this.sodium), this.keystoreChangeIndex);
        this.keystore = next;
        return;
      } catch (error) {
        if (!(error instanceof ConflictError)) throw error;
        await this.reloadKeystore();
      }
    }
    throw new ConflictError(409, "ABORTED", "the keystore kept changing on another device; try again");
  }

  async reloadKeystore(): Promise<void> {
    const { blob, changeIndex } = await this.api.getKeystore();
    this.keystore = Keystore.open(this.sodium, blob, { masterKey: this.keystore.masterKey });
    this.keystoreChangeIndex = changeIndex;
  }
}
