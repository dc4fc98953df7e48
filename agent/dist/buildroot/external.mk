# The devid external tree.
# Generated from agent/dist/manifest.toml by "make dist-gen"; do not edit.
include $(sort $(wildcard $(BR2_EXTERNAL_DEVID_PATH)/package/*/*.mk))
