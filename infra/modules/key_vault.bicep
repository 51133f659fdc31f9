// Key vault the workspace keeps its secrets in (datastore credentials, connection strings).

@description('Short name shared by every resource of this deployment (lowercase letters and digits).')
param baseName string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

// Vault names are global, 3-24 characters. With purge protection on, a deleted vault keeps its name
// for the retention period: redeploying to the same resource group recovers it (see infra/README.md).
var keyVaultName = take('kv-${baseName}-${uniqueString(resourceGroup().id)}', 24)

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: no VNet in this template; the workspace and its clusters reach the vault over its public endpoint, access is Entra ID RBAC only
  // checkov:skip=CKV_AZURE_189: same reason (README: network isolation)
  name: keyVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    // RBAC instead of access policies: who can read secrets is decided by role assignments only.
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

output id string = keyVault.id
output name string = keyVault.name
