/**
 * The typed lab model `loadLab()` returns: the YAML lab definition with defaults applied.
 * Field names follow stacks/lab.schema.json (see docs/lab-definition.md).
 */

export interface SecretRef {
  /** Pulumi config key holding the secret, e.g. `kvmlab:hostKey`. */
  readonly secret: string;
}

export interface LabHost {
  readonly name: string;
  readonly address: string;
  readonly port: number;
  readonly user: string;
  /** Exactly one of `privateKey` (a secret reference) and `privateKeyPath` is set. */
  readonly privateKey: SecretRef | null;
  readonly privateKeyPath: string | null;
  /** Pinned SSH host key (`ssh-ed25519 AAAA…`). */
  readonly hostKey: string;
}

export interface LabIdentity {
  readonly domains: readonly { readonly name: string; readonly description: string | null }[];
  readonly projects: readonly {
    readonly name: string;
    readonly domain: string;
    readonly quotas: {
      readonly instances: number | null;
      readonly vcpus: number | null;
      readonly ramMiB: number | null;
    };
  }[];
  readonly users: readonly {
    readonly name: string;
    readonly domain: string;
    readonly password: SecretRef | null;
    readonly sshPublicKey: string | null;
  }[];
  readonly assignments: readonly {
    readonly user: string;
    readonly project: string;
    readonly role: "admin" | "member" | "reader";
  }[];
}

export interface LabArtifact {
  readonly source: string;
  readonly checksum: string;
}

export interface LabImage {
  readonly name: string;
  readonly format: "qcow2" | "raw" | "kernel";
  /** Disk images only. */
  readonly source: string | null;
  readonly checksum: string | null;
  /** Kernel images only. */
  readonly kernel: LabArtifact | null;
  readonly ramdisk: LabArtifact | null;
  readonly cmdline: string | null;
  readonly minDiskGiB: number;
  readonly minRamMiB: number;
  readonly defaultUser: string;
}

export interface LabFlavor {
  readonly name: string;
  readonly vcpus: number;
  readonly ramMiB: number;
  readonly diskGiB: number;
  readonly ephemeralGiB: number;
  readonly swapMiB: number;
  readonly extraSpecs: Readonly<Record<string, string>>;
}

export interface LabKeypair {
  readonly name: string;
  readonly publicKey: string;
}

export interface LabSubnet {
  readonly name: string;
  readonly network: string;
  readonly cidr: string;
  readonly gateway: string | null;
  readonly pool: { readonly start: string; readonly end: string };
  readonly dhcp: boolean;
  readonly dns: readonly string[];
}

export interface LabNetwork {
  readonly name: string;
  readonly kind: "provider" | "selfservice";
  readonly driver: "linuxbridge" | "openvswitch";
  readonly external: boolean;
  readonly physicalInterface: string | null;
  readonly vni: number | null;
  readonly mtu: number | null;
  readonly subnets: readonly LabSubnet[];
}

export interface LabRouter {
  readonly name: string;
  readonly externalNetwork: string | null;
  readonly interfaces: readonly string[];
}

export interface LabRule {
  readonly direction: "ingress" | "egress";
  readonly protocol: "tcp" | "udp" | "icmp" | "any";
  /** Inclusive port range; `null` for every port (or icmp/any). */
  readonly ports: { readonly min: number; readonly max: number } | null;
  readonly remoteCidr: string | null;
  readonly remoteGroup: string | null;
  readonly description: string | null;
}

export interface LabSecurityGroup {
  readonly name: string;
  readonly description: string | null;
  readonly rules: readonly LabRule[];
}

export interface LabPort {
  readonly subnet: string;
  readonly fixedIp: string | null;
}

export interface LabUserData {
  readonly writeFiles: readonly {
    readonly path: string;
    readonly content: string;
    readonly permissions: string;
    readonly owner: string;
  }[];
  readonly runcmd: readonly (string | readonly string[])[];
}

export interface LabLaunch {
  readonly image: string;
  readonly flavor: string;
  readonly networks: readonly LabPort[];
  readonly keypair: string | null;
  readonly securityGroups: readonly string[];
  readonly userData: LabUserData;
}

export interface LabServer extends LabLaunch {
  readonly name: string;
  readonly project: string;
  readonly host: string | null;
  readonly floatingIp: boolean;
}

export interface LabHealthMonitor {
  readonly type: "TCP" | "HTTP" | "HTTPS" | "TLS-HELLO";
  readonly delay: number;
  readonly timeout: number;
  readonly maxRetries: number;
  readonly maxRetriesDown: number;
  readonly httpMethod: string | null;
  readonly urlPath: string | null;
  readonly expectedCodes: string | null;
  readonly httpVersion: "1.0" | "1.1" | null;
  readonly domainName: string | null;
  readonly adminStateUp: boolean;
}

export interface LabMember {
  /** Set for members that are lab servers; their address is the server's first port. */
  readonly server: string | null;
  readonly name: string;
  readonly address: string | null;
  readonly protocolPort: number;
  readonly weight: number;
  readonly backup: boolean;
  readonly adminStateUp: boolean;
  readonly monitorPort: number | null;
  /** Address the health monitor checks instead of the member's. */
  readonly monitorAddress: string | null;
}

export interface LabPool {
  readonly name: string;
  readonly protocol: "TCP" | "HTTP" | "HTTPS" | "PROXY" | "PROXYV2";
  readonly lbAlgorithm: "ROUND_ROBIN" | "LEAST_CONNECTIONS" | "SOURCE_IP";
  readonly sessionPersistence: {
    readonly type: "SOURCE_IP" | "HTTP_COOKIE" | "APP_COOKIE";
    readonly cookieName: string | null;
  } | null;
  readonly healthMonitor: LabHealthMonitor | null;
  readonly members: readonly LabMember[];
  readonly tlsEnabled: boolean;
  readonly adminStateUp: boolean;
}

export interface LabListener {
  readonly name: string;
  readonly protocol: "TCP" | "HTTP" | "HTTPS" | "TERMINATED_HTTPS";
  readonly protocolPort: number;
  readonly connectionLimit: number;
  readonly timeoutClientData: number;
  readonly timeoutMemberConnect: number;
  readonly timeoutMemberData: number;
  readonly timeoutTcpInspect: number;
  readonly allowedCidrs: readonly string[];
  readonly insertHeaders: {
    readonly "X-Forwarded-For": boolean;
    readonly "X-Forwarded-Port": boolean;
    readonly "X-Forwarded-Proto": boolean;
  };
  readonly certificatePath: string | null;
  /** TERMINATED_HTTPS: more certificates, chosen by the client's SNI. */
  readonly sniCertificatePaths: readonly string[];
  readonly clientAuthentication: "NONE" | "OPTIONAL" | "MANDATORY";
  readonly clientCaPath: string | null;
  readonly clientCrlPath: string | null;
  readonly pool: LabPool | null;
  readonly l7Policies: readonly LabL7Policy[];
  readonly adminStateUp: boolean;
}

export interface LabL7Rule {
  readonly type: "HOST_NAME" | "PATH" | "FILE_TYPE" | "HEADER" | "COOKIE";
  readonly compareType: "REGEX" | "STARTS_WITH" | "ENDS_WITH" | "CONTAINS" | "EQUAL_TO";
  readonly key: string | null;
  readonly value: string;
  readonly invert: boolean;
  readonly adminStateUp: boolean;
}

export interface LabL7Policy {
  readonly name: string;
  readonly action: "REJECT" | "REDIRECT_TO_URL" | "REDIRECT_TO_POOL" | "REDIRECT_PREFIX";
  readonly position: number | null;
  readonly redirectUrl: string | null;
  readonly redirectPrefix: string | null;
  readonly redirectPool: LabPool | null;
  readonly redirectHttpCode: number | null;
  readonly rules: readonly LabL7Rule[];
  readonly adminStateUp: boolean;
}

export interface LabLoadBalancer {
  readonly name: string;
  readonly project: string;
  readonly vipSubnet: string;
  readonly vipAddress: string | null;
  readonly floatingIp: boolean;
  readonly securityGroups: readonly string[];
  readonly host: string | null;
  readonly topology: "SINGLE" | "ACTIVE_STANDBY";
  readonly standbyHost: string | null;
  readonly listeners: readonly LabListener[];
}

export interface LabPolicy {
  readonly name: string;
  readonly metric: "cpu";
  readonly above: number | null;
  readonly below: number | null;
  readonly adjustment: number;
  readonly cooldownSec: number;
}

export interface LabAutoscaleGroup {
  readonly name: string;
  readonly project: string;
  readonly launch: LabLaunch;
  readonly min: number;
  readonly max: number;
  readonly desired: number;
  readonly policies: readonly LabPolicy[];
  readonly pool: {
    readonly loadBalancer: string;
    readonly listener: string;
    readonly protocolPort: number;
    readonly weight: number;
  } | null;
}

export interface LabTier {
  readonly autoscaleGroup: string | null;
  readonly server: string | null;
  readonly loadBalancer: string | null;
}

export interface LabApp {
  readonly name: string;
  readonly kind: "threeTier";
  readonly web: LabTier;
  readonly was: LabTier;
  readonly db: LabTier;
  readonly bastion: LabTier;
}

/** A validated lab definition with defaults applied. */
export interface Lab {
  readonly name: string;
  readonly defaultProject: string;
  readonly hosts: readonly LabHost[];
  readonly identity: LabIdentity;
  readonly images: readonly LabImage[];
  readonly flavors: readonly LabFlavor[];
  readonly keypairs: readonly LabKeypair[];
  readonly networks: readonly LabNetwork[];
  readonly routers: readonly LabRouter[];
  readonly securityGroups: readonly LabSecurityGroup[];
  readonly servers: readonly LabServer[];
  readonly loadBalancers: readonly LabLoadBalancer[];
  readonly autoscaleGroups: readonly LabAutoscaleGroup[];
  readonly apps: readonly LabApp[];
}

/** One problem in a lab definition: where (YAML path and line) and how to fix it. */
export interface LabIssue {
  /** YAML path, e.g. `servers[2].flavor`; empty for the document itself. */
  readonly path: string;
  /** 1-based line and column of the offending node (or of its parent when it is missing). */
  readonly line: number;
  readonly column: number;
  readonly message: string;
  readonly fix: string;
}
