# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_fieldagent_global_optspecs
    string join \n config= v/verbose q/quiet h/help V/version
end

function __fish_fieldagent_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_fieldagent_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_fieldagent_using_subcommand
    set -l cmd (__fish_fieldagent_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c fieldagent -n "__fish_fieldagent_needs_command" -l config -d 'Config file' -r -F
complete -c fieldagent -n "__fish_fieldagent_needs_command" -s v -l verbose -d 'More log output from `run` than log.level says (-v debug, -vv trace)'
complete -c fieldagent -n "__fish_fieldagent_needs_command" -s q -l quiet -d 'Less: `run` logs warnings and errors only (-qq errors only); `check` prints only warnings and errors'
complete -c fieldagent -n "__fish_fieldagent_needs_command" -s h -l help -d 'Print help'
complete -c fieldagent -n "__fish_fieldagent_needs_command" -s V -l version -d 'Print version'
complete -c fieldagent -n "__fish_fieldagent_needs_command" -f -a "run" -d 'Run the agent (the default when no subcommand is given)'
complete -c fieldagent -n "__fish_fieldagent_needs_command" -f -a "check" -d 'Validate the config, certificates, identity and sensors; print every finding; exit 0 or 78'
complete -c fieldagent -n "__fish_fieldagent_needs_command" -f -a "config" -d 'Print the merged config as the agent runs it (its drop-ins merged, every default filled in) with where each value comes from (file and line, or default); exit 0 or 78'
complete -c fieldagent -n "__fish_fieldagent_needs_command" -f -a "cert" -d 'The device key and certificate: make the key on the board, a request for it, show them'
complete -c fieldagent -n "__fish_fieldagent_needs_command" -f -a "identity" -d 'Print the MQTT client ID and which source it came from'
complete -c fieldagent -n "__fish_fieldagent_needs_command" -f -a "sign" -d 'For operators: sign a command or operation request for devices that require signed requests (security.command_keys); prints the JWS to publish as the message'
complete -c fieldagent -n "__fish_fieldagent_needs_command" -f -a "read" -d 'Read every configured sensor once and print a table'
complete -c fieldagent -n "__fish_fieldagent_needs_command" -f -a "status" -d 'Say what the running agent is doing (connection, queue, raised alerts, failing sensors), from state_dir; exit 0 when it runs, 3 when it does not or its state is stale'
complete -c fieldagent -n "__fish_fieldagent_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand run" -l config -d 'Config file' -r -F
complete -c fieldagent -n "__fish_fieldagent_using_subcommand run" -s v -l verbose -d 'More log output from `run` than log.level says (-v debug, -vv trace)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand run" -s q -l quiet -d 'Less: `run` logs warnings and errors only (-qq errors only); `check` prints only warnings and errors'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand run" -s h -l help -d 'Print help'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand check" -l config -d 'Config file' -r -F
complete -c fieldagent -n "__fish_fieldagent_using_subcommand check" -l connect -d 'Then connect to the broker once as the device (TLS, CONNACK), subscribe to its command topic and publish a QoS 1 message to its health topic, each step timed; exit 1 when a step fails. Refused while the agent runs'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand check" -s v -l verbose -d 'More log output from `run` than log.level says (-v debug, -vv trace)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand check" -s q -l quiet -d 'Less: `run` logs warnings and errors only (-qq errors only); `check` prints only warnings and errors'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand check" -s h -l help -d 'Print help'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand config" -l config -d 'Config file' -r -F
complete -c fieldagent -n "__fish_fieldagent_using_subcommand config" -l json -d 'Print one JSON object {"config":{…},"origins":{"key.path":"file:line"|"default"}}'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand config" -s v -l verbose -d 'More log output from `run` than log.level says (-v debug, -vv trace)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand config" -s q -l quiet -d 'Less: `run` logs warnings and errors only (-qq errors only); `check` prints only warnings and errors'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand config" -s h -l help -d 'Print help'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and not __fish_seen_subcommand_from create-key csr show help" -l config -d 'Config file' -r -F
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and not __fish_seen_subcommand_from create-key csr show help" -s v -l verbose -d 'More log output from `run` than log.level says (-v debug, -vv trace)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and not __fish_seen_subcommand_from create-key csr show help" -s q -l quiet -d 'Less: `run` logs warnings and errors only (-qq errors only); `check` prints only warnings and errors'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and not __fish_seen_subcommand_from create-key csr show help" -s h -l help -d 'Print help'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and not __fish_seen_subcommand_from create-key csr show help" -f -a "create-key" -d 'Make a P-256 key at broker.tls.key_file (mode 0600, created exclusively)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and not __fish_seen_subcommand_from create-key csr show help" -f -a "csr" -d 'Print or write a PKCS#10 request signed by the device key'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and not __fish_seen_subcommand_from create-key csr show help" -f -a "show" -d 'Show the device certificate and where its key lives (file, tpm, pkcs11)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and not __fish_seen_subcommand_from create-key csr show help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from create-key" -l config -d 'Config file' -r -F
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from create-key" -l tpm -d 'Inside the TPM 2.0 (broker.tls.tpm.tcti): the file holds only its wrapped form'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from create-key" -l force -d 'Replace an existing key (the device\'s identity changes with it)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from create-key" -s v -l verbose -d 'More log output from `run` than log.level says (-v debug, -vv trace)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from create-key" -s q -l quiet -d 'Less: `run` logs warnings and errors only (-qq errors only); `check` prints only warnings and errors'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from create-key" -s h -l help -d 'Print help'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from csr" -l cn -d 'The subject CN (default: the client ID the agent would use without a certificate)' -r
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from csr" -l out -d 'Write the request to FILE instead of printing it' -r -F
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from csr" -l config -d 'Config file' -r -F
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from csr" -s v -l verbose -d 'More log output from `run` than log.level says (-v debug, -vv trace)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from csr" -s q -l quiet -d 'Less: `run` logs warnings and errors only (-qq errors only); `check` prints only warnings and errors'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from csr" -s h -l help -d 'Print help'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from show" -l config -d 'Config file' -r -F
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from show" -l json -d 'Print one JSON object instead of lines'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from show" -s v -l verbose -d 'More log output from `run` than log.level says (-v debug, -vv trace)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from show" -s q -l quiet -d 'Less: `run` logs warnings and errors only (-qq errors only); `check` prints only warnings and errors'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from help" -f -a "create-key" -d 'Make a P-256 key at broker.tls.key_file (mode 0600, created exclusively)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from help" -f -a "csr" -d 'Print or write a PKCS#10 request signed by the device key'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from help" -f -a "show" -d 'Show the device certificate and where its key lives (file, tpm, pkcs11)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand cert; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand identity" -l config -d 'Config file' -r -F
complete -c fieldagent -n "__fish_fieldagent_using_subcommand identity" -s v -l verbose -d 'More log output from `run` than log.level says (-v debug, -vv trace)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand identity" -s q -l quiet -d 'Less: `run` logs warnings and errors only (-qq errors only); `check` prints only warnings and errors'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand identity" -s h -l help -d 'Print help'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand sign" -l key -d 'The Ed25519 private key (PEM), whose public half is <KID>.pem on the devices' -r -F
complete -c fieldagent -n "__fish_fieldagent_using_subcommand sign" -l kid -d 'The key id: the name of the public key\'s file on the devices, without .pem' -r
complete -c fieldagent -n "__fish_fieldagent_using_subcommand sign" -l topic -d 'The exact topic the request will be published to' -r
complete -c fieldagent -n "__fish_fieldagent_using_subcommand sign" -l config -d 'Config file' -r -F
complete -c fieldagent -n "__fish_fieldagent_using_subcommand sign" -s v -l verbose -d 'More log output from `run` than log.level says (-v debug, -vv trace)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand sign" -s q -l quiet -d 'Less: `run` logs warnings and errors only (-qq errors only); `check` prints only warnings and errors'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand sign" -s h -l help -d 'Print help'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand read" -l config -d 'Config file' -r -F
complete -c fieldagent -n "__fish_fieldagent_using_subcommand read" -l json -d 'Print one JSON object {"values":{…},"errors":{…}} instead of a table'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand read" -s v -l verbose -d 'More log output from `run` than log.level says (-v debug, -vv trace)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand read" -s q -l quiet -d 'Less: `run` logs warnings and errors only (-qq errors only); `check` prints only warnings and errors'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand read" -s h -l help -d 'Print help'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand status" -l config -d 'Config file' -r -F
complete -c fieldagent -n "__fish_fieldagent_using_subcommand status" -l json -d 'Print one JSON object instead of a table'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand status" -s v -l verbose -d 'More log output from `run` than log.level says (-v debug, -vv trace)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand status" -s q -l quiet -d 'Less: `run` logs warnings and errors only (-qq errors only); `check` prints only warnings and errors'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand status" -s h -l help -d 'Print help'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand help; and not __fish_seen_subcommand_from run check config cert identity sign read status help" -f -a "run" -d 'Run the agent (the default when no subcommand is given)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand help; and not __fish_seen_subcommand_from run check config cert identity sign read status help" -f -a "check" -d 'Validate the config, certificates, identity and sensors; print every finding; exit 0 or 78'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand help; and not __fish_seen_subcommand_from run check config cert identity sign read status help" -f -a "config" -d 'Print the merged config as the agent runs it (its drop-ins merged, every default filled in) with where each value comes from (file and line, or default); exit 0 or 78'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand help; and not __fish_seen_subcommand_from run check config cert identity sign read status help" -f -a "cert" -d 'The device key and certificate: make the key on the board, a request for it, show them'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand help; and not __fish_seen_subcommand_from run check config cert identity sign read status help" -f -a "identity" -d 'Print the MQTT client ID and which source it came from'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand help; and not __fish_seen_subcommand_from run check config cert identity sign read status help" -f -a "sign" -d 'For operators: sign a command or operation request for devices that require signed requests (security.command_keys); prints the JWS to publish as the message'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand help; and not __fish_seen_subcommand_from run check config cert identity sign read status help" -f -a "read" -d 'Read every configured sensor once and print a table'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand help; and not __fish_seen_subcommand_from run check config cert identity sign read status help" -f -a "status" -d 'Say what the running agent is doing (connection, queue, raised alerts, failing sensors), from state_dir; exit 0 when it runs, 3 when it does not or its state is stale'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand help; and not __fish_seen_subcommand_from run check config cert identity sign read status help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand help; and __fish_seen_subcommand_from cert" -f -a "create-key" -d 'Make a P-256 key at broker.tls.key_file (mode 0600, created exclusively)'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand help; and __fish_seen_subcommand_from cert" -f -a "csr" -d 'Print or write a PKCS#10 request signed by the device key'
complete -c fieldagent -n "__fish_fieldagent_using_subcommand help; and __fish_seen_subcommand_from cert" -f -a "show" -d 'Show the device certificate and where its key lives (file, tpm, pkcs11)'
