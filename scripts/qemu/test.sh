#!/usr/bin/env bash
# Placeholder until the QEMU board test lands (issue 7).
echo "qemu-test: not built yet"
