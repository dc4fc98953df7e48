package dps

import (
	"context"
	"crypto/tls"
	"errors"
)

// Probe opens the connection the DPS and hub clients would open to
// endpoint ("host" or "host:port"): resolve override or HTTP CONNECT
// proxy, TLS verified against the trust bundle with cred as the client
// certificate (nil: none), and the WebSocket upgrade when configured.
// It then closes it without speaking MQTT. For health checks such as
// `devid-agent check`, so they fail exactly when the clients would.
func (n *Network) Probe(ctx context.Context, endpoint string, cred *tls.Certificate) error {
	c, err := n.dial(ctx, endpoint, cred)
	if err != nil {
		return err
	}
	return c.Close()
}

// ProbeServer is Probe for a device without a client certificate yet:
// it succeeds once the server's certificate has been verified against
// the trust bundle, even when the server then ends the TLS handshake for
// want of a client certificate (as a server that requires one does).
func (n *Network) ProbeServer(ctx context.Context, endpoint string) error {
	verified := false
	c, err := n.dialWith(ctx, endpoint, nil, func() { verified = true })
	if err == nil {
		return c.Close()
	}
	var te *TLSError
	if verified && errors.As(err, &te) {
		return nil
	}
	return err
}
