# Board-specific config for fieldagent: this board's sensors and its broker.
FILESEXTRAPATHS:prepend := "${THISDIR}/files:"
SRC_URI += "file://config.yaml"

do_install:append() {
    install -m 0644 ${UNPACKDIR}/config.yaml ${D}${sysconfdir}/fieldagent/config.yaml
}
