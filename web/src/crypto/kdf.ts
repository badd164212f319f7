// Key derivation for the screens: the floor check (before anything is derived) and the worker.
import type { KdfParams, PasswordKeys } from "./kdf-core";

export type { KdfParams, PasswordKeys } from "./kdf-core";

/** libsodium's INTERACTIVE cost: the same floor as the SDK (fabula_sdk.KDF_FLOOR, WeakKdfError)
 * and the editor service; each limit on its own (docs/encryption.md, "The floor"). */
export const KDF_FLOOR: KdfParams = { opslimit: 2, memlimit: 67108864 };
/** libsodium's MODERATE cost, what new accounts get unless the writer picks the floor. */
export const KDF_DEFAULT: KdfParams = { opslimit: 3, memlimit: 268435456 };

export class WeakKdfError extends Error {
  name = "WeakKdfError";
}

export function requireFloor(kdf: KdfParams, askedBy: string, floor: KdfParams = KDF_FLOOR): KdfParams {
  if (!Number.isInteger(kdf.opslimit) || !Number.isInteger(kdf.memlimit)) {
    throw new WeakKdfError(`${askedBy} sent an Argon2id cost that is not two integers`);
  }
  if (kdf.opslimit < floor.opslimit || kdf.memlimit < floor.memlimit) {
    throw new WeakKdfError(
      `${askedBy} asked for an Argon2id cost of ${kdf.opslimit} passes and ${kdf.memlimit} bytes, below this ` +
      `client's floor of ${floor.opslimit} passes and ${floor.memlimit} bytes; refusing to derive keys that ` +
      "cheap (a server that asks for this may be trying to brute-force the password)");
  }
  return kdf;
}

/** Argon2id + the two subkeys, in a Web Worker. `floor` is checked first; only the browser vector
 * check passes a lower one (the vectors include libsodium's minimum cost). */
export function deriveKeys(password: string, salt: Uint8Array, kdf: KdfParams, askedBy: string,
                           floor: KdfParams = KDF_FLOOR): Promise<PasswordKeys> {
  requireFloor(kdf, askedBy, floor);
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL("./kdf-worker.ts", import.meta.url), { type: "module" });
    worker.onmessage = (event) => {
      worker.terminate();
      if (event.data.ok) resolve({ authKey: event.data.authKey, keyEncryptionKey: event.data.keyEncryptionKey });
      else reject(new Error(`key derivation failed: ${event.data.error}`));
    };
    worker.onerror = (event) => {
      worker.terminate();
      reject(new Error(`key derivation failed: ${event.message}`));
    };
    worker.postMessage({ password, salt, kdf });
  });
}
