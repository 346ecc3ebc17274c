/**
 * A server's artifacts: the domain XML for both domain types and the NoCloud seed files, with
 * the UUID, MACs and tap names seeded by the server's identity. Pure; the Server component
 * (apply) and `kvmlab render` both call {@link renderServer}, so what render shows is what apply
 * puts on the hosts.
 */
import { checkNoEphemeralOrSwap, flavorDomainSettings } from "../core/flavor";
import { serverPaths } from "../core/paths";
import type { ServerFlavor, ServerImage } from "../core/shapes";
import { renderCloudInit, toCloudInitView, type CloudUserSpec, type WriteFileSpec } from "./cloudInit";
import { renderDomainXml, toDomainView, type DomainSpec } from "./domain";
import { deterministicIfName, deterministicMac, deterministicUuid } from "./validate";

/** The seed of a server's UUID, MACs and tap names: stable per project, stack and server name. */
export function serverUuidSeed(project: string, stack: string, serverName: string): string {
  return `${project}/${stack}/${serverName}`;
}

/** What the guest's cloud-init does beyond networking and the keypair. */
export interface ServerUserData {
  /** Extra users (the keypair's user is added for you). */
  readonly users?: readonly CloudUserSpec[];
  readonly writeFiles?: readonly WriteFileSpec[];
  readonly runcmd?: readonly (string | readonly string[])[];
}

/** Everything the component renders for one server (pure; exported for tests and `kvmlab render`). */
export interface ServerRenderInput {
  serverName: string;
  uuidSeed: string;
  /** The Pulumi project (metadata `lab`). */
  lab: string;
  /** The stack (metadata `stack`). */
  stack: string;
  /** The identity project, `<domain>/<name>` ("" for none): metadata `project`. */
  project: string;
  /** The owner string; the Server provider fills it when "" or absent (what the program does). */
  owner?: string;
  image: ServerImage;
  flavor: ServerFlavor;
  ports: {
    networkName: string;
    subnetName: string;
    bridge: string;
    driver: "linuxbridge" | "openvswitch";
    mtu: number;
  }[];
  kernelCmdline: string;
  cloudInit: boolean;
  publicKeys: string[];
  userName: string;
  userData: ServerUserData;
  consoleListen: string;
}

/** Renders the XML variants and seed files of a server (pure). */
export function renderServer(r: ServerRenderInput): {
  uuid: string;
  macs: string[];
  taps: string[];
  domainXml: { kvm: string; qemu: string };
  cloudInit: { metaData: string; userData: string; networkConfig: string };
} {
  const uuid = deterministicUuid(r.uuidSeed);
  const macs = r.ports.map((_, i) => deterministicMac(`${r.uuidSeed}/port${i}`));
  const taps = r.ports.map((_, i) => deterministicIfName("tap", `${r.uuidSeed}/port${i}`));
  // The instance folder of the UUID (issue 15), never of the bare name.
  const paths = serverPaths(uuid);
  const hasDisk = r.image.disk !== "";
  // The whole flavor reaches the domain: extra specs become XML or an error naming the key.
  const noDisks = checkNoEphemeralOrSwap(r.flavor);
  if (noDisks) throw noDisks;
  const specs = r.flavor.extraSpecs ?? {};
  const flavorSettings =
    Object.keys(specs).length > 0 ? flavorDomainSettings(specs, r.flavor.vcpus, "flavor.extraSpecs") : null;
  const spec = (type: "kvm" | "qemu"): DomainSpec => ({
    name: r.serverName,
    uuid,
    type,
    vcpus: r.flavor.vcpus,
    memoryMiB: r.flavor.ramMiB,
    boot:
      r.image.kind === "kernel"
        ? {
            kind: "kernel",
            kernel: r.image.kernel,
            initrd: r.image.ramdisk === "" ? null : r.image.ramdisk,
            cmdline: r.kernelCmdline,
            disk: hasDisk ? paths.disk : null,
            format: "qcow2",
          }
        : { kind: "disk", disk: paths.disk, format: "qcow2" },
    seedIso: r.cloudInit ? paths.seedIso : null,
    nics: r.ports.map((p, i) => ({
      bridge: p.bridge,
      driver: p.driver,
      target: taps[i],
      mac: macs[i],
      mtu: p.mtu,
    })),
    serialLog: paths.serialLog,
    vnc: { listen: r.consoleListen, port: "auto" },
    metadata: {
      lab: r.lab,
      stack: r.stack,
      project: r.project,
      ...(r.owner !== undefined && r.owner !== "" ? { owner: r.owner } : {}),
      server: r.serverName,
      image: r.image.name,
      flavor: r.flavor.name,
    },
    tbCacheMiB: type === "qemu" ? 32 : null,
    flavorSettings,
  });
  const domainXml = {
    kvm: renderDomainXml(toDomainView(spec("kvm"))),
    qemu: renderDomainXml(toDomainView(spec("qemu"))),
  };
  let cloudInit = { metaData: "", userData: "", networkConfig: "" };
  if (r.cloudInit) {
    const users: CloudUserSpec[] = [
      ...(r.publicKeys.length > 0
        ? [{ name: r.userName, sshAuthorizedKeys: r.publicKeys, sudo: true, shell: "/bin/sh" }]
        : []),
      ...(r.userData.users ?? []),
    ];
    const files = renderCloudInit(
      toCloudInitView({
        instanceId: uuid,
        hostname: r.serverName,
        users,
        writeFiles: r.userData.writeFiles,
        runcmd: r.userData.runcmd,
        nics: r.ports.map((p, i) => ({ name: `eth${i}`, mac: macs[i], address: "dhcp", mtu: p.mtu })),
      }),
    );
    cloudInit = {
      metaData: files["meta-data"],
      userData: files["user-data"],
      networkConfig: files["network-config"],
    };
  }
  return { uuid, macs, taps, domainXml, cloudInit };
}
