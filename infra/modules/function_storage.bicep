// Storage account of the retraining function: the Functions host's own state (leases, queues) and the container
// its code package is deployed to. Kept apart from the workspace's storage so the function's data-owner role
// never reaches the training data or the workspace's artifacts. Entra ID only: no account keys.

@description('Short name shared by every resource of this deployment (lowercase letters and digits).')
param baseName string

@description('Azure region.')
param location string

@description('Tags applied to every resource.')
param tags object

@description('Blob container the Flex Consumption plan deploys the function package to.')
param deploymentContainerName string = 'function-package'

// Names are global, 3-24 lowercase letters and digits: "stfn" + baseName + a stable suffix.
var storageAccountName = take(toLower('stfn${baseName}${uniqueString(resourceGroup().id)}'), 24)

resource storageAccount 'Microsoft.Storage/storageAccounts@2024-01-01' = {
  // checkov:skip=CKV_AZURE_35: no VNet in this template; the Functions host reaches its storage over the public endpoint, with Entra ID only (shared keys off)
  // checkov:skip=CKV_AZURE_59: same reason; anonymous access and shared keys are both disabled
  // checkov:skip=CKV_AZURE_43: the name is take(toLower(...), 24) of letters and digits, which checkov cannot evaluate
  // checkov:skip=CKV_AZURE_206: host state and the code package only, both rebuilt by a redeploy; locally redundant is enough
  name: storageAccountName
  location: location
  tags: tags
  sku: {
    name: 'Standard_LRS'
  }
  kind: 'StorageV2'
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    // The host and the deployment use the function's managed identity (AzureWebJobsStorage__credential).
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2024-01-01' = {
  parent: storageAccount
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2024-01-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

output id string = storageAccount.id
output name string = storageAccount.name
output blobEndpoint string = storageAccount.properties.primaryEndpoints.blob
output deploymentContainerName string = deploymentContainer.name
