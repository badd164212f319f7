// Signing up, in, out and changing the password (the same protocol as sdk/fabula_sdk/client.py):
// the password only ever reaches the key-derivation worker; the server gets the derived auth key.
// "Remember this device" (opt-in, docs/web.md) keeps the token and the master key in this
// browser's localStorage; otherwise they live in memory and a reload signs out.
import { Api } from "./api/client";
import { Vault } from "./api/vault";
import { fromBase64, toBase64 } from "./crypto/bytes";
import { deriveKeys, KDF_FLOOR, requireFloor, type KdfParams } from "./crypto/kdf";
import { Keystore, rewrap } from "./crypto/keystore";
import { loadSodium, randomBytes } from "./crypto/sodium";
import { SALT_BYTES } from "./crypto/kdf-core";

const REMEMBERED = "fabula.rememberedDevice";

export async function signUp(username: string, password: string, kdf: KdfParams, remember: boolean): Promise<Vault> {
  requireFloor(kdf, "this sign-up form");
  const sodium = await loadSodium();
  const api = new Api();
  const salt = randomBytes(sodium, SALT_BYTES);
  const keys = await deriveKeys(password, salt, kdf, "this sign-up form");
  const keystore = Keystore.create(sodium, keys.keyEncryptionKey);
  const session = await api.register(username, salt, kdf, keys.authKey, keystore.seal(sodium));
  api.token = session.token;
  const stored = await api.getKeystore();
  return finish(new Vault(api, sodium, Keystore.open(sodium, stored.blob, { masterKey: keystore.masterKey }), stored.changeIndex, username), remember);
}

export async function signIn(username: string, password: string, remember: boolean): Promise<Vault> {
  const sodium = await loadSodium();
  const api = new Api();
  const { salt, kdf } = await api.salt(username);
  // Checked before anything is derived: no auth key made with a cheap cost is ever sent.
  requireFloor(kdf, "the server");
  const keys = await deriveKeys(password, salt, kdf, "the server");
  const session = await api.login(username, keys.authKey);
  api.token = session.token;
  const stored = await api.getKeystore();
  const keystore = Keystore.open(sodium, stored.blob, { kek: keys.keyEncryptionKey });
  return finish(new Vault(api, sodium, keystore, stored.changeIndex, username), remember);
}

function finish(vault: Vault, remember: boolean): Vault {
  if (remember) rememberDevice(vault);
  else forgetDevice();
  return vault;
}

function rememberDevice(vault: Vault): void {
  localStorage.setItem(REMEMBERED, JSON.stringify({ username: vault.username, token: vault.api.token,
    masterKey: toBase64(vault.keystore.masterKey) }));
}

export function forgetDevice(): void {
  localStorage.removeItem(REMEMBERED);
}

/** The session this device remembers, if any and still valid. */
export async function resume(): Promise<Vault | null> {
  const raw = localStorage.getItem(REMEMBERED);
  if (!raw) return null;
  try {
    const saved = JSON.parse(raw);
    const sodium = await loadSodium();
    const api = new Api();
    api.token = saved.token;
    const stored = await api.getKeystore();
    const keystore = Keystore.open(sodium, stored.blob, { masterKey: fromBase64(saved.masterKey) });
    return new Vault(api, sodium, keystore, stored.changeIndex, saved.username);
  } catch {
    forgetDevice();
    return null;
  }
}

export async function signOut(vault: Vault): Promise<void> {
  forgetDevice();
  try {
    await vault.api.logout();
  } finally {
    vault.api.token = null;
    vault.keystore.masterKey.fill(0);
  }
}

/** A new salt and the account's cost (or `newKdf`), the master key re-wrapped; no object changes. */
export async function changePassword(vault: Vault, oldPassword: string, newPassword: string, newKdf?: KdfParams): Promise<void> {
  const { sodium, api } = vault;
  const { salt, kdf } = await api.salt(vault.username);
  requireFloor(kdf, "the server");
  const oldKeys = await deriveKeys(oldPassword, salt, kdf, "the server");
  const cost = requireFloor(newKdf ?? kdf, "the new password's cost", KDF_FLOOR);
  const newSalt = randomBytes(sodium, SALT_BYTES);
  const newKeys = await deriveKeys(newPassword, newSalt, cost, "the new password's cost");
  for (;;) {
    const stored = await api.getKeystore();
    const blob = rewrap(sodium, stored.blob, oldKeys.keyEncryptionKey, newKeys.keyEncryptionKey);
    try {
      const session = await api.changePassword(oldKeys.authKey, newSalt, cost, newKeys.authKey, blob, stored.changeIndex);
      api.token = session.token;
      vault.keystoreChangeIndex = session.keystoreChangeIndex;
      vault.keystore = Keystore.open(sodium, blob, { masterKey: vault.keystore.masterKey });
      if (localStorage.getItem(REMEMBERED)) rememberDevice(vault);
      return;
    } catch (error: any) {
      if (error?.status !== 409) throw error;
    }
  }
}
