// Package hal holds devid's hardware seams. Each seam lives in its own
// sub-package with a small interface and a fake:
//
//	hal/board       device identity sources (devicetree, DMI, MAC)
//	hal/serial      the factory UART (github.com/tarm/serial)
//	hal/usbgadget   the factory port as a USB CDC-ACM gadget (configfs)
//	hal/tpm         TPM 2.0 transport and keys (github.com/google/go-tpm)
//	hal/gpio        status LED and factory button (periph.io, gpioioctl)
//	hal/atomicfile  state files that survive a power cut on flash
//	hal/clock       the time source (wall clock and timers) every layer above takes
//	hal/cmdline     the command-line conventions of every devid binary
//
// Nothing under hal imports any other devid package.
package hal
