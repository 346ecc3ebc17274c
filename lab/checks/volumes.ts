/** Volumes: references (project, image, host), the servers that list them, one server per volume, one host. */
import type { PathSegment } from "../locate";
import { type CheckContext, str, items } from "./context";

export function checkVolumes(c: CheckContext): void {
  const { data, add, ref, projectsOrAdmin } = c;
  const { hosts, images, volumes } = c.known;
  for (const [i, v] of items(data, "volumes")) {
    const path: PathSegment[] = ["volumes", i];
    if (v.project !== undefined) ref([...path, "project"], v.project, projectsOrAdmin, "project");
    if (v.host !== undefined) ref([...path, "host"], v.host, hosts, "host");
    if (v.image !== undefined) {
      ref([...path, "image"], v.image, images, "image");
      const image = items(data, "images").find(([, x]) => x.name === v.image)?.[1];
      if (image && image.format === "kernel")
        add(
          [...path, "image"],
          `image ${String(v.image)} is a kernel+ramdisk image; a volume copies a disk image`,
          "name a qcow2 or raw image, or leave image out for a blank volume",
        );
    }
  }
  // Each volume attaches to at most one server (Cinder's multiattach is off), on the volume's host.
  const holder = new Map<string, string>();
  for (const [i, s] of items(data, "servers")) {
    const list = Array.isArray(s.volumes) ? s.volumes : [];
    const seen = new Set<string>();
    list.forEach((name, k) => {
      const path: PathSegment[] = ["servers", i, "volumes", k];
      ref(path, name, volumes, "volume");
      const n = str(name);
      if (n === null) return;
      if (seen.has(n)) {
        add(path, `volume ${n} is listed twice`, "list each volume once");
        return;
      }
      seen.add(n);
      const other = holder.get(n);
      if (other !== undefined) {
        add(
          path,
          `volume ${n} is already attached to server ${other}; a volume attaches to one server at a time`,
          `remove it from one of the servers, or define another volume`,
        );
        return;
      }
      holder.set(n, String(s.name));
      const v = items(data, "volumes").find(([, x]) => x.name === n)?.[1];
      if (!v) return;
      const vHost = str(v.host);
      const sHost = str(s.host);
      if (vHost === null && sHost === null)
        add(
          path,
          `volume ${n} has no host and server ${String(s.name)} is not pinned, so the volume's host is unknown`,
          `give the volume a host, or pin the server (host:)`,
        );
      else if (vHost !== null && sHost !== null && vHost !== sHost)
        add(
          path,
          `volume ${n} lives on host ${vHost}, server ${String(s.name)} on host ${sHost}; a volume attaches only to a server on its own host`,
          `pin the server to ${vHost}, or move the volume to ${sHost}`,
        );
    });
  }
  for (const [i, v] of items(data, "volumes")) {
    const n = str(v.name);
    if (n !== null && str(v.host) === null && !holder.has(n))
      add(["volumes", i, "host"], `volume ${n} has no host and no server lists it`, "give it a host");
  }
}
