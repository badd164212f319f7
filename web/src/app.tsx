// The shell: which screen shows, from the signed-in vault and the location hash
// (#/ the library, #/story/<id> the editor, #/account). Stage-2 panels hang off the editor screen.
import { useEffect, useState } from "preact/hooks";
import type { Vault } from "./api/vault";
import { AccountScreen } from "./screens/Account";
import { AuthScreen } from "./screens/Auth";
import { EditorScreen } from "./screens/Editor";
import { LibraryScreen } from "./screens/Library";
import { resume, signOut } from "./session";

function route(): { screen: "library" | "story" | "account"; id?: string } {
  const hash = location.hash.replace(/^#/, "");
  const story = /^\/story\/([A-Za-z0-9_-]{1,64})$/.exec(hash);
  if (story) return { screen: "story", id: story[1] };
  if (hash === "/account") return { screen: "account" };
  return { screen: "library" };
}

export function App() {
  const [vault, setVault] = useState<Vault | null>(null);
  const [resuming, setResuming] = useState(true);
  const [where, setWhere] = useState(route);

  useEffect(() => {
    resume().then((v) => { setVault(v); setResuming(false); });
    const onHash = () => setWhere(route());
    window.addEventListener("hashchange", onHash);
    return () => window.removeEventListener("hashchange", onHash);
  }, []);

  const go = (hash: string) => {
    location.hash = hash;
  };

  if (resuming) return <main><p role="status">Loading…</p></main>;
  if (!vault) return <AuthScreen onSignedIn={setVault} />;
  if (where.screen === "story" && where.id) return <EditorScreen key={where.id} vault={vault} storyId={where.id} onBack={() => go("/")} />;
  if (where.screen === "account") return <AccountScreen vault={vault} onBack={() => go("/")} />;
  return (
    <LibraryScreen vault={vault} onOpen={(id) => go(`/story/${id}`)} onAccount={() => go("/account")}
      onSignOut={async () => { await signOut(vault).catch(() => undefined); setVault(null); go("/"); }} />
  );
}
