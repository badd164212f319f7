// From a password to the two keys a client needs (docs/encryption.md, "Key derivation"):
//   root     = Argon2id(UTF-8(NFC(password)), salt, opslimit, memlimit) -> 32 bytes
//   auth_key = BLAKE2b-256(key = root, personal = "fabula/authkey/1")   sent to the server
//   kek      = BLAKE2b-256(key = root, personal = "fabula/wrapkey/1")   never leaves the browser
// Runs inside the key-derivation worker (kdf-worker.ts); the same code as sdk/fabula_sdk/kdf.py.
import { utf8 } from "./bytes";
import { blake2bPersonal, type Sodium } from "./sodium";

export interface KdfParams {
  opslimit: number;
  memlimit: number;
}

export interface PasswordKeys {
  authKey: Uint8Array;
  keyEncryptionKey: Uint8Array;
}

export const SALT_BYTES = 16;
const AUTH_KEY_PERSONAL = utf8.encode("fabula/authkey/1");
const KEK_PERSONAL = utf8.encode("fabula/wrapkey/1");

export function passwordBytes(password: string): Uint8Array {
  if (!password) throw new Error("password must not be empty");
  return utf8.encode(password.normalize("NFC"));
}

export function rootKey(sodium: Sodium, password: string, salt: Uint8Array, kdf: KdfParams): Uint8Array {
  if (salt.length !== SALT_BYTES) throw new Error(`salt must be ${SALT_BYTES} bytes, not ${salt.length}`);
  return sodium.crypto_pwhash(32, passwordBytes(password), salt, kdf.opslimit, kdf.memlimit,
    sodium.crypto_pwhash_ALG_ARGON2ID13);
}

export function subkeys(sodium: Sodium, root: Uint8Array): PasswordKeys {
  const empty = new Uint8Array(0);
  return {
    authKey: blake2bPersonal(sodium, empty, root, AUTH_KEY_PERSONAL),
    keyEncryptionKey: blake2bPersonal(sodium, empty, root, KEK_PERSONAL),
  };
}
