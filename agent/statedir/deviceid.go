package statedir

import "time"

// DeviceIDFile records where the factory read the device ID, so that the
// agent can tell when the board would yield another one at run time.
const DeviceIDFile = "device-id.json"

// DeviceIDSchema is device-id.json's record version.
const DeviceIDSchema = 1

// DeviceIDRecord is device-id.json.
type DeviceIDRecord struct {
	Schema   int    `json:"schema"`
	DeviceID string `json:"device_id"`
	// Source is the board source the factory read (config, devicetree,
	// dmi, mac) and Configured the device_id_source setting then.
	Source     string    `json:"source"`
	Configured string    `json:"configured_source"`
	At         time.Time `json:"at"`
}

// LoadDeviceID returns the factory's record or an error wrapping
// ErrNotExist.
func (d *Dir) LoadDeviceID() (*DeviceIDRecord, error) {
	var r DeviceIDRecord
	if err := d.readJSON(DeviceIDFile, DeviceIDSchema, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// SaveDeviceID stores r (its Schema is set here).
func (d *Dir) SaveDeviceID(r *DeviceIDRecord) error {
	r.Schema = DeviceIDSchema
	_, err := d.writeJSON(DeviceIDFile, DeviceIDSchema, r)
	return err
}
