<#
.SYNOPSIS
    Exports a Microsoft 365 tenant's accepted domains and inbound connectors for m365-policyd.

.DESCRIPTION
    Connects to Exchange Online (Connect-ExchangeOnline from the ExchangeOnlineManagement module),
    then writes two files in the shape m365-policyd reads:

      accepted-domains.json     Get-AcceptedDomain   (Name, DomainName, DomainType, Default,
                                MatchSubDomains, InitialDomain, OutboundOnly,
                                SendingFromDomainDisabled)
      inbound-connectors.json   Get-InboundConnector (Name, Enabled, ConnectorType,
                                SenderIPAddresses, SenderDomains, TlsSenderCertificateName, ...)

    Enum fields (DomainType, ConnectorType) and typed values (IP ranges, address spaces,
    certificate names) are cast to strings, so the JSON holds "OnPremises" and "203.0.113.0/24"
    rather than numbers or nested objects. Files are always JSON arrays, UTF-8 without a byte
    order mark.

    Finally it prints the [tenant] lines for m365-policyd.toml, including reject_direct_send
    from Get-OrganizationConfig. Copy both JSON files next to the configuration file (for
    example /etc/m365-policyd/), paste the lines into its [tenant] section, and reload the
    daemon (systemctl reload m365-policyd). Re-run the export after every change to accepted
    domains or connectors; the daemon picks up changed files on its own (reload_interval).

    The account needs read access to the Exchange Online configuration (for example the
    View-Only Organization Management role group).

    With -Tenant NAME (a relay serving several tenants), the files go into a directory of their
    own, OutputDirectory/NAME/, and the script also writes OutputDirectory/NAME.toml holding the
    [tenants.NAME] table that names them. Export each tenant into the directory the daemon's
    `include = ["tenants.d/*.toml"]` reads (for example /etc/m365-policyd/tenants.d), then add
    the tenant's endpoints (with [postfix]) or sender_domains to its NAME.toml once.

.PARAMETER OutputDirectory
    Where to write the two JSON files. Created when missing. Default: the current directory.

.PARAMETER Tenant
    The tenant's NAME in m365-policyd (letters, digits, _ and -): write into
    OutputDirectory/NAME/ and write OutputDirectory/NAME.toml with its [tenants.NAME] table.

.PARAMETER UserPrincipalName
    Interactive (delegated) sign-in as this administrator.

.PARAMETER AppId
    App-only sign-in: the application (client) ID of an Entra ID app registration that has the
    Exchange.ManageAsApp permission and an Exchange role. Needs -Organization and
    -CertificateThumbprint or -CertificateFilePath.

.PARAMETER Organization
    App-only sign-in: the tenant's initial domain, for example contoso.onmicrosoft.com.

.PARAMETER CertificateThumbprint
    App-only sign-in: thumbprint of the app's certificate in the current user's certificate store.

.PARAMETER CertificateFilePath
    App-only sign-in: path of the app's certificate as a .pfx file.

.PARAMETER CertificatePassword
    Password of the .pfx file given with -CertificateFilePath.

.PARAMETER UseExistingSession
    Do not connect: use the Exchange Online session already open in this PowerShell.

.EXAMPLE
    ./Export-M365PolicydTenant.ps1 -UserPrincipalName admin@contoso.com -OutputDirectory ./export

.EXAMPLE
    ./Export-M365PolicydTenant.ps1 -AppId 00000000-0000-0000-0000-000000000000 `
        -Organization contoso.onmicrosoft.com -CertificateThumbprint 0123456789ABCDEF0123456789ABCDEF01234567

.EXAMPLE
    Connect-ExchangeOnline; ./Export-M365PolicydTenant.ps1 -UseExistingSession

.EXAMPLE
    ./Export-M365PolicydTenant.ps1 -UserPrincipalName admin@fabrikam.example `
        -Tenant fabrikam -OutputDirectory /etc/m365-policyd/tenants.d

.NOTES
    Part of m365-policyd (contrib/exchange). Needs PowerShell 7 or Windows PowerShell 5.1 and
    the ExchangeOnlineManagement module (Install-Module ExchangeOnlineManagement).
#>
[CmdletBinding(DefaultParameterSetName = 'Interactive')]
param(
    [string] $OutputDirectory = '.',

    [ValidatePattern('^[A-Za-z0-9_-]{1,64}$')]
    [string] $Tenant,

    [Parameter(ParameterSetName = 'Interactive')]
    [string] $UserPrincipalName,

    [Parameter(ParameterSetName = 'AppThumbprint', Mandatory = $true)]
    [Parameter(ParameterSetName = 'AppFile', Mandatory = $true)]
    [string] $AppId,

    [Parameter(ParameterSetName = 'AppThumbprint', Mandatory = $true)]
    [Parameter(ParameterSetName = 'AppFile', Mandatory = $true)]
    [string] $Organization,

    [Parameter(ParameterSetName = 'AppThumbprint', Mandatory = $true)]
    [string] $CertificateThumbprint,

    [Parameter(ParameterSetName = 'AppFile', Mandatory = $true)]
    [string] $CertificateFilePath,

    [Parameter(ParameterSetName = 'AppFile')]
    [securestring] $CertificatePassword,

    [Parameter(ParameterSetName = 'Existing', Mandatory = $true)]
    [switch] $UseExistingSession
)

Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

function Write-JsonFile {
    # Writes $Items as a JSON array, UTF-8 without BOM, and returns the full path.
    param([string] $Path, [object[]] $Items)
    # -InputObject with an array: always a JSON array, also for zero or one item
    $json = ConvertTo-Json -InputObject @($Items) -Depth 4
    $utf8NoBom = New-Object System.Text.UTF8Encoding $false
    [IO.File]::WriteAllText($Path, $json + "`n", $utf8NoBom)
    return $Path
}

function ConvertTo-TomlString {
    # A TOML basic string: backslashes and double quotes escaped.
    param([string] $Value)
    return '"' + ($Value -replace '\\', '\\' -replace '"', '\"') + '"'
}

# --- connect ---------------------------------------------------------------------------------
if (-not $UseExistingSession) {
    if (-not (Get-Command Connect-ExchangeOnline -ErrorAction SilentlyContinue)) {
        throw 'Connect-ExchangeOnline not found: run Install-Module ExchangeOnlineManagement first.'
    }
    $connect = @{ ShowBanner = $false }
    switch ($PSCmdlet.ParameterSetName) {
        'Interactive' {
            if ($UserPrincipalName) { $connect.UserPrincipalName = $UserPrincipalName }
        }
        'AppThumbprint' {
            $connect.AppId = $AppId
            $connect.Organization = $Organization
            $connect.CertificateThumbprint = $CertificateThumbprint
        }
        'AppFile' {
            $connect.AppId = $AppId
            $connect.Organization = $Organization
            $connect.CertificateFilePath = (Resolve-Path -LiteralPath $CertificateFilePath).Path
            if ($CertificatePassword) { $connect.CertificatePassword = $CertificatePassword }
        }
    }
    Connect-ExchangeOnline @connect
}

# --- export ----------------------------------------------------------------------------------
if (-not (Test-Path -LiteralPath $OutputDirectory)) {
    New-Item -ItemType Directory -Path $OutputDirectory | Out-Null
}
$baseDir = (Resolve-Path -LiteralPath $OutputDirectory).Path
$outDir = $baseDir
if ($Tenant) {
    # one directory per tenant, next to the NAME.toml that the daemon's include reads
    $outDir = Join-Path $baseDir $Tenant
    if (-not (Test-Path -LiteralPath $outDir)) {
        New-Item -ItemType Directory -Path $outDir | Out-Null
    }
}

$acceptedDomains = @(
    Get-AcceptedDomain |
        Select-Object Name, DomainName,
            @{ n = 'DomainType'; e = { "$($_.DomainType)" } },
            Default, MatchSubDomains, InitialDomain, OutboundOnly, SendingFromDomainDisabled
)

$inboundConnectors = @(
    Get-InboundConnector |
        Select-Object Name, Enabled,
            @{ n = 'ConnectorType'; e = { "$($_.ConnectorType)" } },
            ConnectorSource,
            @{ n = 'SenderIPAddresses'; e = { @($_.SenderIPAddresses | ForEach-Object { "$_" }) } },
            @{ n = 'SenderDomains'; e = { @($_.SenderDomains | ForEach-Object { "$_" }) } },
            @{ n = 'TlsSenderCertificateName'; e = { "$($_.TlsSenderCertificateName)" } },
            RequireTls, RestrictDomainsToCertificate, RestrictDomainsToIPAddresses,
            CloudServicesMailEnabled, TreatMessagesAsInternal,
            @{ n = 'AssociatedAcceptedDomains'; e = { @($_.AssociatedAcceptedDomains | ForEach-Object { "$_" }) } }
)

$domainsFile = Write-JsonFile -Path (Join-Path $outDir 'accepted-domains.json') -Items $acceptedDomains
$connectorsFile = Write-JsonFile -Path (Join-Path $outDir 'inbound-connectors.json') -Items $inboundConnectors

# RejectDirectSend is missing (null) on tenants where the setting never existed: treat as off.
$organization = Get-OrganizationConfig
$rejectDirectSend = $false
if ($organization.PSObject.Properties['RejectDirectSend'] -and $organization.RejectDirectSend) {
    $rejectDirectSend = $true
}

$onPremises = @($inboundConnectors | Where-Object { $_.ConnectorType -eq 'OnPremises' -and $_.Enabled })
Write-Host ("Exported {0} accepted domains and {1} inbound connectors ({2} enabled OnPremises) to {3}" -f `
        $acceptedDomains.Count, $inboundConnectors.Count, $onPremises.Count, $outDir)
if ($onPremises.Count -eq 0) {
    Write-Warning 'No enabled OnPremises inbound connector: Microsoft 365 will refuse all relayed mail (550 5.7.64).'
}

# --- the configuration lines -----------------------------------------------------------------
# Relative file names are resolved against the directory of the file that names them.
$direct = $(if ($rejectDirectSend) { 'true' } else { 'false' })
if ($Tenant) {
    $tomlPath = Join-Path $baseDir ($Tenant + '.toml')
    $lines = @(
        '# Written by Export-M365PolicydTenant.ps1; re-running it rewrites this file.',
        '# Add what routes mail to this tenant: endpoints (with [postfix]) or sender_domains.',
        "[tenants.$Tenant]",
        ('accepted_domains_file = ' + (ConvertTo-TomlString ($Tenant + '/' + (Split-Path -Leaf $domainsFile)))),
        ('inbound_connectors_file = ' + (ConvertTo-TomlString ($Tenant + '/' + (Split-Path -Leaf $connectorsFile)))),
        ('reject_direct_send = ' + $direct)
    )
    $utf8NoBom = New-Object System.Text.UTF8Encoding $false
    [IO.File]::WriteAllText($tomlPath, ($lines -join "`n") + "`n", $utf8NoBom)
    Write-Host "Wrote $tomlPath; the daemon reads it through include = [""tenants.d/*.toml""]."
    return
}
Write-Host ''
Write-Host '# Copy both JSON files next to m365-policyd.toml and put these lines in its [tenant] section:'
Write-Output '[tenant]'
Write-Output ('accepted_domains_file = ' + (ConvertTo-TomlString (Split-Path -Leaf $domainsFile)))
Write-Output ('inbound_connectors_file = ' + (ConvertTo-TomlString (Split-Path -Leaf $connectorsFile)))
Write-Output ('reject_direct_send = ' + $direct)
