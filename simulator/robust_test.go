package simulator_test

import (
	"math/rand/v2"
	"strings"
	"testing"

	"devid/simulator/simtest"
)

// TestRandomInputNeverKillsTheSimulator throws seeded random topics and
// payloads at DPS and the hub (bounded count). Each may close its
// connection; the simulator must stay up and log no panic (simtest fails
// the test on a panic in the simulator's log).
func TestRandomInputNeverKillsTheSimulator(t *testing.T) {
	t.Parallel()
	sim := startSim(t)
	ca := simtest.NewDeviceCA(t)
	sim.EnrollGroup(t, "g", ca.Root)
	dev := ca.Issue(t, "chaos")
	if st := register(t, sim, dev, ""); st.Status != "assigned" {
		t.Fatal(st)
	}
	h := sim.Hub("")
	rng := rand.New(rand.NewPCG(1, 2))
	pieces := []string{"$dps/registrations/", "PUT/iotdps-register/", "GET/iotdps-get-operationstatus/", "?$rid=", "&operationId=",
		"devices/chaos/messages/events/", "$iothub/twin/GET/", "$iothub/twin/PATCH/properties/reported/", "$iothub/methods/res/",
		"$iothub/credentials/POST/issueCertificate/", "%24.ct=", "%", "%zz", "&", "=", "/", "?", "200", "-1", "x", "\u00e9", "$"}
	bodies := []string{"", " ", "{", "{}", "null", `{"registrationId":"chaos"}`, `{"registrationId":5}`, `{"csr":"AAAA"}`, `[1,2]`, "\x00\xff", `{"a":{"b":null}}`}
	randTopic := func() string {
		var b strings.Builder
		for n := 1 + rng.IntN(4); n > 0; n-- {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		return b.String()
	}
	for i := 0; i < 150; i++ {
		dps := i%2 == 0
		var c *mqttClient
		var err error
		if dps {
			c, err = dialMQTT(t, sim.Ready.DPS.Addr, "chaos", dpsUser(sim, "chaos"), sim.TLSConfig(sim.Ready.DPS.Host, dev.TLSCertificate()), true)
		} else {
			c, err = dialMQTT(t, h.Addr, "chaos", hubUser(h, "chaos"), sim.TLSConfig(h.Host, dev.TLSCertificate()), true)
		}
		if err != nil {
			t.Fatalf("round %d: connect: %v", i, err)
		}
		// One publish per connection: most close it, and paho's Publish can
		// block while it tears a closed connection down.
		tok := c.c.Publish(randTopic(), byte(rng.IntN(2)), false, bodies[rng.IntN(len(bodies))])
		_ = tok.WaitTimeout(0)
		c.c.Disconnect(0)
	}
	if _, err := sim.Do("GET", "/sim/healthz", nil, nil); err != nil {
		t.Fatalf("simulator down after random input: %v", err)
	}
	if st := register(t, sim, ca.Issue(t, "after-chaos"), ""); st.Status != "assigned" {
		t.Fatalf("simulator broken after random input: %+v", st)
	}
}
