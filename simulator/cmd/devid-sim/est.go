package main

import (
	"net/http"

	"devid/simulator"
	"devid/simulator/est"
)

// estHandler mounts the EST server (simulator/est) on the EST listener,
// signing with the simulator's issuing CA.
func estHandler(s *simulator.Sim) http.Handler {
	cfg := s.Config()
	h, err := est.New(est.Config{
		Issuer:   s.PKI.IssuingCA,
		Key:      s.PKI.IssuingKey,
		CACerts:  s.PKI.IssuingChain(),
		Validity: cfg.IssuedValidity,
	})
	if err != nil {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "EST: "+err.Error(), http.StatusInternalServerError)
		})
	}
	return h
}
