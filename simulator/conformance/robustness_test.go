package conformance

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/eclipse/paho.mqtt.golang/packets"
)

// TestGarbageInput feeds DPS and the hub bytes that are not MQTT, packets
// out of order and truncated frames, each on its own TLS connection. Each
// must be closed, and the simulator must keep serving well-formed clients
// afterwards (it never panics or wedges).
func TestGarbageInput(t *testing.T) {
	t.Parallel()
	tg := startSim(t)
	ca := newTestCA(t, "conformance garbage CA")
	tg.enrollGroup("garbage", ca.PEM, nil)
	dev := ca.issue(t, "garbage-1", leafOpts{})

	// Fixed noise, so that a failure can be reproduced. Its first byte is
	// packet type 0, reserved in MQTT: a broker must close at once. Truly
	// random bytes began with a CONNECT header claiming a longer body 1
	// run in a few hundred, and then the broker rightly waited for the
	// rest until its 30 s CONNECT deadline (a different case).
	noise := make([]byte, 4096)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range noise {
		noise[i] = byte(rng.Uint32())
	}
	noise[0] = 0x00
	pub := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
	pub.TopicName, pub.Payload = "devices/garbage-1/messages/events/", []byte("x")
	// Each case gets a connection and the identity that endpoint would accept.
	type identity struct{ clientID, user, topic string }
	cases := map[string]func(c *rawConn, id identity) error{
		"random bytes":           func(c *rawConn, _ identity) error { _, err := c.conn.Write(noise); return err },
		"PUBLISH before CONNECT": func(c *rawConn, _ identity) error { return c.write(pub) },
		"truncated CONNECT": func(c *rawConn, _ identity) error {
			_, err := c.conn.Write([]byte{0x10, 0x7f, 0x00, 0x04, 'M', 'Q'})
			if err == nil {
				c.conn.(interface{ CloseWrite() error }).CloseWrite()
			}
			return err
		},
		"remaining length overflow": func(c *rawConn, _ identity) error {
			_, err := c.conn.Write([]byte{0x10, 0xff, 0xff, 0xff, 0xff, 0x7f})
			return err
		},
		"invalid UTF-8 topic after CONNECT": func(c *rawConn, id identity) error {
			if code, err := c.connect(id.clientID, id.user, true); err != nil || code != 0 {
				return fmt.Errorf("CONNECT as %s: %d %v", id.clientID, code, err)
			}
			p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
			p.TopicName = id.topic + "\xff\xfe"
			p.Payload = registerBody(id.clientID)
			return c.write(p)
		},
	}
	i := 0
	for name, send := range cases {
		i++
		i := i
		t.Run("DPS/"+name, func(t *testing.T) {
			tg := tg.on(t)
			t.Parallel()
			d := ca.issue(t, fmt.Sprintf("garbage-dps-%d", i), leafOpts{})
			c, err := dialTLS(t, tg.dps(), tg.roots, &d.TLS)
			if err != nil {
				t.Fatalf("TLS: %v", err)
			}
			id := identity{d.CN, dpsUser(tg.ready.IDScope, d.CN), "$dps/registrations/PUT/iotdps-register/?$rid="}
			if err := send(c, id); err != nil && !isClosed(err) {
				t.Fatal(err)
			}
			if err := c.expectClosed(); err != nil {
				t.Errorf("%s: %v; the connection must be closed", name, err)
			}
		})
		t.Run("hub/"+name, func(t *testing.T) {
			tg := tg.on(t)
			t.Parallel()
			// A device of its own, so that no other subtest's session kicks this one.
			d := tg.provision(t, ca, fmt.Sprintf("garbage-hub-%d", i))
			c := tg.hubDial(t, d)
			id := identity{d.id, hubUser(d.host, d.id), "devices/" + d.id + "/messages/events/k="}
			if err := send(c, id); err != nil && !isClosed(err) {
				t.Fatal(err)
			}
			if err := c.expectClosed(); err != nil {
				t.Errorf("%s: %v; the connection must be closed", name, err)
			}
		})
	}
	t.Cleanup(func() {
		// Still alive: a normal registration completes after all of the above.
		tg.mustRegister(t, dev)
	})
}
