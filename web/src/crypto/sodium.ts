// libsodium (libsodium-wrappers-sumo: the build with Argon2id), loaded once. The primitives are
// those of docs/encryption.md and of the Python SDK (sdk/fabula_sdk/aead.py, kdf.py).
import sodiumModule from "libsodium-wrappers-sumo";

export type Sodium = typeof sodiumModule;

let ready: Promise<Sodium> | null = null;

export function loadSodium(): Promise<Sodium> {
  ready ??= sodiumModule.ready.then(() => sodiumModule);
  return ready;
}

export const KEY_BYTES = 32;
export const NONCE_BYTES = 24;
export const TAG_BYTES = 16;

export class DecryptionError extends Error {
  name = "DecryptionError";
}

export function randomBytes(sodium: Sodium, n: number): Uint8Array {
  return sodium.randombytes_buf(n);
}

/** BLAKE2b-256 of `message` keyed with `key`, empty salt, 16-byte personalisation (libsodium's
 * crypto_generichash_blake2b_salt_personal). The JavaScript wrapper of that function hashes only
 * an empty message, and derived keys hash a type and id, so it is called on the module directly. */
export function blake2bPersonal(sodium: Sodium, message: Uint8Array, key: Uint8Array, personal: Uint8Array): Uint8Array {
  if (personal.length !== 16) throw new Error("BLAKE2b personal must be 16 bytes");
  const lib = (sodium as any).libsodium;
  const sizes = [KEY_BYTES, message.length, key.length, 16, 16];
  const addresses = sizes.map((n) => lib._malloc(Math.max(n, 1)));
  const [out, msg, k, salt, person] = addresses;
  try {
    lib.HEAPU8.set(message, msg);
    lib.HEAPU8.set(key, k);
    lib.HEAPU8.fill(0, salt, salt + 16);
    lib.HEAPU8.set(personal, person);
    // The message length is a 64-bit argument: its low and high 32-bit halves.
    const failed = lib._crypto_generichash_blake2b_salt_personal(out, KEY_BYTES, msg, message.length, 0, k, key.length, salt, person);
    if (failed) throw new Error("BLAKE2b failed");
    return lib.HEAPU8.slice(out, out + KEY_BYTES);
  } finally {
    addresses.forEach((address) => lib._free(address));
  }
}

export function seal(sodium: Sodium, key: Uint8Array, nonce: Uint8Array, plaintext: Uint8Array, ad: Uint8Array): Uint8Array {
  if (key.length !== KEY_BYTES || nonce.length !== NONCE_BYTES) throw new Error("key must be 32 bytes and nonce 24");
  return sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, null, nonce, key);
}

export function open(sodium: Sodium, key: Uint8Array, nonce: Uint8Array, ciphertext: Uint8Array, ad: Uint8Array,
                     what: string): Uint8Array {
  if (ciphertext.length < TAG_BYTES) throw new DecryptionError(`${what}: ciphertext is shorter than its tag`);
  try {
    return sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(null, ciphertext, ad, nonce, key);
  } catch {
    throw new DecryptionError(`${what}: authentication failed (tampered with, belongs to another object, ` +
      "or encrypted under another key)");
  }
}
