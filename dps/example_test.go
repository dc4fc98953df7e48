package dps_test

import (
	"context"
	"crypto"
	"crypto/tls"
	"errors"
	"log"
	"time"

	"devid/dps"
)

// Provision with DPS, then talk to the assigned hub.
func Example() {
	var signer crypto.Signer // from the key store (TPM or file)
	var chainDER [][]byte    // leaf first, then intermediates
	cred := tls.Certificate{PrivateKey: signer, Certificate: chainDER}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := dps.Register(ctx, dps.Config{IDScope: "0ne00000001", Certificate: cred})
	switch {
	case errors.Is(err, dps.ErrDisabled), errors.Is(err, dps.ErrFailed):
		log.Fatalf("DPS refused this device for good: %v", err)
	case err != nil && dps.Retryable(err):
		log.Printf("try again later: %v", err)
		return
	case err != nil:
		log.Fatal(err)
	}
	hub, err := dps.ConnectHub(ctx, dps.HubConfig{Host: res.AssignedHub, DeviceID: res.DeviceID, Certificate: cred})
	if errors.Is(err, dps.ErrNotAuthorized) {
		log.Print("the hub does not know this identity: register again")
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	defer hub.Close()
	err = hub.SendTelemetry(ctx, &dps.Message{Payload: []byte(`{"t":21.5}`), ContentType: "application/json",
		ContentEncoding: "utf-8", Properties: map[string]string{"alarm": "false"}})
	if err != nil {
		log.Print(err)
	}
	// The connection does not come back by itself: when it drops, Done
	// closes and the caller connects again (or registers again).
	select {
	case <-hub.Done():
		log.Printf("hub connection lost: %v", hub.Err())
	case <-ctx.Done():
	}
}
