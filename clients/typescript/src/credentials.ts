/** Transport security settings: server-authenticated TLS and mutual TLS. */
import { readFileSync } from "node:fs";
import type { SecureClientSessionOptions } from "node:http2";

/**
 * How to secure the connection to the control plane. `{}` verifies the server against
 * Node's trusted roots. Give `ca` to trust a private CA, and `cert` with `key` to present a
 * client certificate (mutual TLS). Values are PEM strings or buffers.
 */
export interface TlsOptions {
  /** PEM bundle of CAs that may sign the server's certificate; omit for Node's roots. */
  readonly ca?: string | Buffer;
  /** PEM client certificate chain, for mutual TLS (needs `key`). */
  readonly cert?: string | Buffer;
  /** PEM private key of the client certificate, for mutual TLS (needs `cert`). */
  readonly key?: string | Buffer;
  /**
   * Verify the server certificate against this name (and send it as SNI) instead of the
   * target's host: for connecting by IP address or through a tunnel, not a way to skip
   * verification.
   */
  readonly serverName?: string;
}

/** Build {@link TlsOptions} from PEM files on disk. */
export function tlsFromFiles(files: {
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  serverName?: string;
}): TlsOptions {
  return {
    ...(files.caFile === undefined ? {} : { ca: readFileSync(files.caFile) }),
    ...(files.certFile === undefined ? {} : { cert: readFileSync(files.certFile) }),
    ...(files.keyFile === undefined ? {} : { key: readFileSync(files.keyFile) }),
    ...(files.serverName === undefined ? {} : { serverName: files.serverName }),
  };
}

/** The options of Node's `http2.connect()` for `tls`. */
export function tlsSessionOptions(tls: TlsOptions): SecureClientSessionOptions {
  if ((tls.cert === undefined) !== (tls.key === undefined)) {
    throw new TypeError("tls.cert and tls.key must be given together (mutual TLS)");
  }
  return {
    ...(tls.ca === undefined ? {} : { ca: tls.ca }),
    ...(tls.cert === undefined ? {} : { cert: tls.cert }),
    ...(tls.key === undefined ? {} : { key: tls.key }),
    ...(tls.serverName === undefined ? {} : { servername: tls.serverName }),
  };
}
