package dps

import (
	"context"
	"crypto/tls"
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
