// Account: change the password (the master key is re-wrapped; no story is re-encrypted).
import { useState } from "preact/hooks";
import type { Vault } from "../api/vault";
import { changePassword } from "../session";
import { Busy } from "./Auth";

export function AccountScreen({ vault, onBack }: { vault: Vault; onBack(): void }) {
  const [oldPassword, setOld] = useState("");
  const [newPassword, setNew] = useState("");
  const [confirm, setConfirm] = useState("");
  const [busy, setBusy] = useState(false);
  const [message, setMessage] = useState<{ ok: boolean; text: string } | null>(null);

  const submit = async (event: Event) => {
    event.preventDefault();
    if (newPassword !== confirm) {
      setMessage({ ok: false, text: "The two new passwords differ." });
      return;
    }
    setBusy(true);
    setMessage(null);
    try {
      await changePassword(vault, oldPassword, newPassword);
      setMessage({ ok: true, text: "Password changed. Other devices must sign in again." });
      setOld(""); setNew(""); setConfirm("");
    } catch (err: any) {
      setMessage({ ok: false, text: err?.status === 401 ? "The current password is wrong." : String(err?.message ?? err) });
    } finally {
      setBusy(false);
    }
  };

  return (
    <main class="account">
      <nav class="bar"><button type="button" onClick={onBack}>← Library</button></nav>
      <h1>Account: {vault.username}</h1>
      <form onSubmit={submit} aria-label="Change password">
        <h2>Change password</h2>
        <label>Current password
          <input type="password" name="old-password" autocomplete="current-password" required value={oldPassword}
            onInput={(e) => setOld((e.target as HTMLInputElement).value)} />
        </label>
        <label>New password
          <input type="password" name="new-password" autocomplete="new-password" required value={newPassword}
            onInput={(e) => setNew((e.target as HTMLInputElement).value)} />
        </label>
        <label>Repeat the new password
          <input type="password" name="confirm-password" autocomplete="new-password" required value={confirm}
            onInput={(e) => setConfirm((e.target as HTMLInputElement).value)} />
        </label>
        <button type="submit" class="primary" disabled={busy}>Change password</button>
        {busy && <Busy label="Deriving the new keys" />}
        {message && <p class={message.ok ? "ok" : "error"} role={message.ok ? "status" : "alert"}>{message.text}</p>}
      </form>
    </main>
  );
}
