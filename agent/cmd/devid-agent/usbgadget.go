package main

import (
	"fmt"
	"log/slog"

	"devid/agent/config"
	"devid/hal/usbgadget"
)

// gadgetSystem is where the factory's USB gadget is made (the real
// configfs; tests point it at a fake).
var gadgetSystem usbgadget.System

// factoryPort is the device the factory bus is served on: factory.port,
// or with factory.usb_gadget the tty of a gadget made for the purpose.
// done removes that gadget; call it after the port is closed (the kernel
// waits for the tty to be closed before it removes the function).
func factoryPort(cfg *config.Config, deviceID string, log *slog.Logger) (port string, done func(), err error) {
	f := cfg.Factory
	if !f.USBGadget {
		return f.Port, func() {}, nil
	}
	vid, pid, err := usbgadget.ParseID(f.USBID)
	if err != nil {
		return "", nil, fmt.Errorf("factory.usb_id: %w", err)
	}
	g, err := gadgetSystem.Create(usbgadget.Config{VendorID: vid, ProductID: pid, SerialNumber: deviceID,
		Manufacturer: f.USBManufacturer, Product: f.USBProduct, UDC: f.USBUDC})
	if err != nil {
		return "", nil, fmt.Errorf("factory.usb_gadget: %w", err)
	}
	if g.Replaced {
		log.Warn("removed a USB gadget an earlier run left behind", "gadget", g.Dir())
	}
	log.Info("USB gadget bound", "gadget", g.Dir(), "udc", g.UDC(), "tty", g.TTY(), "usb_serial", deviceID,
		"usb_id", f.USBID)
	return g.TTY(), func() {
		if err := g.Close(); err != nil {
			log.Error("USB gadget not removed", "gadget", g.Dir(), "err", err)
			return
		}
		log.Info("USB gadget removed", "gadget", g.Dir())
	}, nil
}
