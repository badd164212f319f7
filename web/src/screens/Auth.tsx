// Sign in / sign up. Key derivation runs in a worker; while it runs the form shows an
// indeterminate progress bar with the elapsed time (libsodium reports no progress of its own).
import { useEffect, useState } from "preact/hooks";
import type { Vault } from "../api/vault";
import { KDF_DEFAULT, KDF_FLOOR } from "../crypto/kdf";
import { signIn, signUp } from "../session";

export function Busy({ label }: { label: string }) {
  const [start] = useState(() => performance.now());
  const [now, setNow] = useState(start);
  useEffect(() => {
    const timer = setInterval(() => setNow(performance.now()), 100);
    return () => clearInterval(timer);
  }, []);
  return (
    <div class="busy" role="status">
      <progress aria-label={label} />
      <span>{label} ({((now - start) / 1000).toFixed(1)} s)</span>
    </div>
  );
}

export function AuthScreen({ onSignedIn }: { onSignedIn(vault: Vault): void }) {
  const [mode, setMode] = useState<"signin" | "signup">("signin");
  const [username, setUsername] = useState("");
  const [password, setPassword] = useState("");
  const [confirm, setConfirm] = useState("");
  const [cost, setCost] = useState<"default" | "floor">("default");
  const [remember, setRemember] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState("");

  const submit = async (event: Event) => {
    event.preventDefault();
    setError("");
    if (mode === "signup" && password !== confirm) {
      setError("The two passwords differ.");
      return;
    }
    setBusy(true);
    try {
      const vault = mode === "signup"
        ? await signUp(username, password, cost === "default" ? KDF_DEFAULT : KDF_FLOOR, remember)
        : await signIn(username, password, remember);
      onSignedIn(vault);
    } catch (err: any) {
      setError(err?.status === 401 ? "Wrong username or password." : String(err?.message ?? err));
      setBusy(false);
    }
  };

  return (
    <main class="auth">
      <h1>Fabula</h1>
      <p class="lede">Write with an AI. Your stories are encrypted in this browser before they are stored.</p>
      <div class="tabs" role="group" aria-label="Sign in or sign up">
        <button type="button" aria-pressed={mode === "signin"} onClick={() => setMode("signin")}>Sign in</button>
        <button type="button" aria-pressed={mode === "signup"} onClick={() => setMode("signup")}>Create account</button>
      </div>
      <form onSubmit={submit} aria-label={mode === "signin" ? "Sign in" : "Create account"}>
        <label>Username
          <input name="username" autocomplete="username" required value={username}
            onInput={(e) => setUsername((e.target as HTMLInputElement).value)} />
        </label>
        <label>Password
          <input name="password" type="password" required autocomplete={mode === "signin" ? "current-password" : "new-password"}
            value={password} onInput={(e) => setPassword((e.target as HTMLInputElement).value)} />
        </label>
        {mode === "signup" && (
          <>
            <label>Repeat the password
              <input name="confirm" type="password" required autocomplete="new-password" value={confirm}
                onInput={(e) => setConfirm((e.target as HTMLInputElement).value)} />
            </label>
            <label>Key derivation cost
              <select name="cost" value={cost} onChange={(e) => setCost((e.target as HTMLSelectElement).value as any)}>
                <option value="default">Standard: 3 passes, 256 MiB (recommended)</option>
                <option value="floor">Lighter: 2 passes, 64 MiB (slow devices; 4× cheaper to attack)</option>
              </select>
            </label>
            <p class="hint">There is no password reset: the password is the only key to your stories.</p>
          </>
        )}
        <label class="check">
          <input name="remember" type="checkbox" checked={remember} onChange={(e) => setRemember((e.target as HTMLInputElement).checked)} />
          Remember this device (keeps your key in this browser's storage; anyone using this browser profile can read your stories)
        </label>
        <button type="submit" class="primary" disabled={busy}>{mode === "signin" ? "Sign in" : "Create account"}</button>
        {busy && <Busy label="Deriving keys from the password" />}
        {error && <p class="error" role="alert">{error}</p>}
      </form>
    </main>
  );
}
